#!/usr/bin/env python3
"""Save and restore the whole vector state of one vCPU, against the floor.

At SVL 2048 with SVCR.SM = SVCR.ZA = 1 the state is 256 ZA rows, Z0-Z31,
P0-P15, FFR, ZT0 and the control registers. pyvmm's path is
``VecState.save()`` then ``VecState.restore(saved)`` (which follows the §6
restore plan); the floor is the very same ioctls (recorded from pyvmm's
path, same order, same ids) issued in a bare loop over prebuilt
``kvm_one_reg`` structs. Prints the ioctl count, both times and their
ratio (target: at most 1.5).

On a kernel without SME it measures the SVE state (Z/P/FFR at the largest
SVE length) instead, and says so.

Usage: python3 bench/sme_state.py [--rounds N] [--svl BITS] [--json] [--enforce]
Run it where /dev/kvm is arm64 KVM, e.g.:
  ci/qemu-aarch64/run --kernel "$(ci/qemu-aarch64/kernel/build)" -- python3 bench/sme_state.py
"""
import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from pyvmm.arm64 import regs  # noqa: E402
from pyvmm import sme, vecstate  # noqa: E402
from pyvmm import _fd  # noqa: E402
from pyvmm._ffi import ffi, libc  # noqa: E402
from pyvmm.ioctls import request  # noqa: E402
from pyvmm.kvm import open_kvm  # noqa: E402

TARGET = 1.5


def record(vcpu, fn):
    """Run ``fn`` once, recording every (request name, register id) it
    issues, through the vCPU's ioctl method or the fd layer's prepared ioctls."""
    seen = []
    names = {request(n).number: n for n in ("KVM_GET_ONE_REG", "KVM_SET_ONE_REG")}
    real_fd_ioctl, real_libc = vcpu.ioctl, _fd.libc

    def spy(name, arg=0, reg=None):
        seen.append((name, int(arg.id) if name in names.values() else None))
        return real_fd_ioctl(name, arg, reg)

    class SpyLibc:
        def ioctl(self, fd, req, arg):
            seen.append((names.get(int(req), hex(int(req))), int(arg.id)))
            return real_libc().ioctl(fd, req, arg)

    vcpu.ioctl = spy
    _fd.libc = lambda: SpyLibc()
    try:
        fn()
    finally:
        del vcpu.ioctl
        _fd.libc = real_libc
    return seen


def floor_loop(vcpu, sequence):
    """The same ioctls with nothing around them: prebuilt structs and buffers."""
    bufs = {}
    calls = []
    for name, reg_id in sequence:
        if reg_id is None:
            raise SystemExit(f"unexpected {name} in the recorded sequence")
        if reg_id not in bufs:
            b = ffi.new("uint8_t[]", regs.size_of(reg_id))
            one = ffi.new("struct kvm_one_reg *")
            one.id, one.addr = reg_id, int(ffi.cast("uintptr_t", b))
            bufs[reg_id] = (b, one)
        calls.append((ffi.cast("unsigned long", request(name).number), bufs[reg_id][1]))
    ioctl, fd = libc().ioctl, vcpu.fd

    def loop():
        for req, one in calls:
            if ioctl(fd, req, one) < 0:
                raise OSError(ffi.errno, "floor ioctl failed")
    loop.buffers = bufs  # the structs hold only the buffers' addresses: keep them alive
    return loop


def timed(a, b, rounds):
    """Median and minimum times of ``a`` and ``b``, run alternately so both
    see the same background noise (emulated machines are noisy)."""
    a(), b()  # warm up
    ta, tb = [], []
    for _ in range(rounds):
        for fn, out in ((a, ta), (b, tb)):
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
    return (statistics.median(ta), min(ta)), (statistics.median(tb), min(tb))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--svl", type=int, default=2048, help="streaming vector length in bits (default 2048)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--enforce", action="store_true", help=f"exit 1 if the ratio is above {TARGET}")
    a = ap.parse_args()

    kvm = open_kvm()
    found = sme.discover(kvm)
    vm = kvm.create_vm()
    vcpu = vm.create_vcpu(0)
    if found.present:
        sme.configure_vcpu(vcpu, found.bit, None, a.svl)
        st = vecstate.VecState(vcpu, found.bit)
        st.set_svcr(vecstate.SVCR_SM | vecstate.SVCR_ZA)
        what = f"SVE+SME vCPU, SVL {128 * max(st.sme_vqs)} bits, SVCR = 0x3 (SM=1, ZA=1)"
    else:
        sme.configure_vcpu(vcpu, None, None, None)
        st = vecstate.VecState(vcpu)
        what = (f"SVE-only vCPU, VL {128 * max(st.sve_vqs)} bits "
                f"(SME absent from this kernel: {found.reason})")
    # Give every register non-zero contents (FFR monotonic).
    saved = st.save()
    for k, (name, data) in enumerate(saved.registers.items()):
        rid = regs.parse(name)
        kind = regs.decode(rid).kind
        if kind in ("sve_z", "sve_p", "sme_za", "sme_zt"):
            vcpu.set_one_reg(rid, bytes((k + j) & 0xFF for j in range(len(data))).ljust(regs.size_of(rid), b"\0"))
    saved = st.save()
    kinds = {}
    for name in saved.registers:
        kind = regs.decode(regs.parse(name)).kind
        kinds[kind] = kinds.get(kind, 0) + 1

    def pyvmm_round():
        st.restore(st.save())

    sequence = record(vcpu, pyvmm_round)
    floor = floor_loop(vcpu, sequence)
    (t_py, t_py_min), (t_fl, t_fl_min) = timed(pyvmm_round, floor, a.rounds)
    assert st.save() == saved, "state changed during the benchmark"
    ratio = t_py / t_fl
    result = {
        "state": what,
        "registers": len(saved.registers),
        "by_kind": kinds,
        "ioctls_per_round": len(sequence),
        "gets": sum(1 for n, _ in sequence if n == "KVM_GET_ONE_REG"),
        "sets": sum(1 for n, _ in sequence if n == "KVM_SET_ONE_REG"),
        "rounds": a.rounds,
        "pyvmm_ms": round(t_py * 1e3, 3), "pyvmm_min_ms": round(t_py_min * 1e3, 3),
        "floor_ms": round(t_fl * 1e3, 3), "floor_min_ms": round(t_fl_min * 1e3, 3),
        "ratio": round(ratio, 3), "ratio_of_minima": round(t_py_min / t_fl_min, 3), "target": TARGET, "within_target": ratio <= TARGET,
    }
    vm.close()
    kvm.close()
    if a.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"vector state: {what}")
        print(f"  {result['registers']} registers: " + ", ".join(f"{v} {k}" for k, v in sorted(kinds.items())))
        print(f"  save + restore = {result['ioctls_per_round']} ioctls "
              f"({result['gets']} KVM_GET_ONE_REG, {result['sets']} KVM_SET_ONE_REG)")
        print(f"  pyvmm (VecState.save + restore by the §6 plan): {result['pyvmm_ms']:.2f} ms "
              f"(median of {a.rounds}, alternating with the floor, min {result['pyvmm_min_ms']:.2f})")
        print(f"  floor (same ioctls, bare loop):                 {result['floor_ms']:.2f} ms "
              f"(min {result['floor_min_ms']:.2f})")
        print(f"  ratio {ratio:.2f} of medians, {t_py_min / t_fl_min:.2f} of minima "
              f"(target <= {TARGET}: {'met' if ratio <= TARGET else 'NOT met'})")
    if a.enforce and ratio > TARGET:
        sys.exit(1)


if __name__ == "__main__":
    main()

"""Helpers (no tests) for the SME KVM tests: the requirement of a kernel with
the SME ABI, and the bare-metal guests/baremetal/sme_state.s payload's
checkpoint, seeds and register patterns."""
import itertools
import os

import pytest

from pyvmm import sme, vecstate
from pyvmm.arm64 import regs
from pyvmm.machine.baremetal import RAM_BASE


def require_sme(request, kvm):
    found = sme.discover(kvm)
    if found.present:
        return found
    expr = request.config.getoption("-m") or ""
    wanted = os.environ.get("PYVMM_REQUIRE_SME") == "1" or ("sme_kernel" in expr and "not sme_kernel" not in expr)
    msg = f"needs a kernel with the KVM SME ABI ({found.reason})"
    if wanted:
        pytest.fail(msg)
    pytest.skip(msg)


CHECKPOINT = 0x100
SEED_A, SEED_B = 0x3C, 0xA7
# The Streaming Vector Length is a power of two between 128 and 2048 bits
# (Arm ARM, SMCR_ELx.LEN): these are every SVL an SME implementation can have.
SVLS = [128, 256, 512, 1024, 2048]
STATES = list(itertools.product((0, 1), (0, 1)))


def pattern(seed, slot, n):
    """Byte k of slot s: (seed + 13 s + 7 k) mod 256 (as the payload computes it)."""
    return bytes((seed + 13 * slot + 7 * k) & 0xFF for k in range(n))


def ffr_pattern(seed, pl):
    m = seed % pl + 1  # monotonic: WRFFR takes nothing else
    return b"\xff" * m + bytes(pl - m)


def slot_of(name):
    d = regs.decode(regs.parse(name))
    if d.kind == "sve_z" or (d.kind == "core" and name.startswith("V")):
        return d.index if d.kind == "sve_z" else int(name[1:])
    if d.kind == "sve_p":
        return 32 + d.index
    if d.kind == "sme_zt":
        return 50
    if d.kind == "sme_za":
        return 64 + d.index
    return None


def expected_registers(saved, seed):
    """The data registers of ``saved``'s mode, as the payload fills them."""
    out = {}
    for name, data in saved.registers.items():
        if name == "FFR":
            out[name] = ffr_pattern(seed, len(data))
        elif slot_of(name) is not None:
            out[name] = pattern(seed, slot_of(name), len(data))
    return out


def start_payload(bm, host, image, svl, sm, za, with_sve):
    """Load guests/baremetal/sme_state.s into ``bm``, give its vCPU SME at
    ``svl`` (with or without SVE) and tell the payload which SM/ZA state to
    enter and which patterns to use. Returns (VecShape, VecState)."""
    bm.load(image)
    cfg = sme.configure_vcpu(bm.vcpu, host.bit, None, svl, sve=with_sve)
    st = vecstate.VecState(bm.vcpu, host.bit)
    flags = sm | za << 1 | int(with_sve) << 2 | int(st.fa64) << 3 | int(st.sme2) << 4
    bm.enter_at(RAM_BASE)
    for n, value in enumerate((flags, SEED_A, SEED_B)):
        bm.vcpu.set_reg(regs.core(f"X{n}"), value)
    return cfg, st

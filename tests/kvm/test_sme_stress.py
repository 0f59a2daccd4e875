"""Stress of the SME kernel's context switch (issue: kernel side, evidence).

Two vCPUs (one bare-metal VM each, one host thread each) loop: SMSTART, fill
every ZA row, ZT0 and streaming Z1 with a vCPU-specific pattern, exit to the
VMM (which moves the vCPU thread to the other host CPU before re-entering),
check everything, SMSTOP. Meanwhile host processes inside the test machine
run their own SME loop (guests/linux-user/sme_hostloop.s) across
sched_yield() and preemption. Pass = zero mismatches in guests and hosts.
Duration: PYVMM_STRESS_SECONDS (default 60).
"""
import os
import subprocess
import threading
import time

import pytest

from pyvmm import exits, sme
from pyvmm.arm64 import regs
from pyvmm.machine.baremetal import MAILBOX_BASE, RAM_BASE, BareMetal
from support import guestbuild
from support.sme_guest import require_sme

pytestmark = [pytest.mark.kvm, pytest.mark.sme_kernel]

STOP_FLAG = RAM_BASE + 0x8000
SMCR_FA64, SMCR_EZT0 = 1 << 31, 1 << 30


class Vcpu(threading.Thread):
    def __init__(self, kvm, found, seed, image, deadline, corrupt_at=None):
        super().__init__(name=f"vcpu-seed{seed}")
        self.bm = BareMetal(kvm)
        self.bm.load(image)
        sme.configure_vcpu(self.bm.vcpu, found.bit, sve=True)
        vq = max(found.vqs)
        self.svl_bits = 128 * vq
        v = self.bm.vcpu
        v.set_reg(regs.SMCR_EL1, SMCR_FA64 | SMCR_EZT0 | (vq - 1))
        v.set_reg(regs.core("X0"), seed)
        self.bm.enter_at(RAM_BASE)
        self.deadline = deadline
        self.seed, self.corrupt_at = seed, corrupt_at
        self.exits = self.iterations = self.migrations = 0
        self.mismatches = None
        self.error = None

    def run(self):
        try:
            v, cpus = self.bm.vcpu, sorted(os.sched_getaffinity(0))
            stopping = False
            while True:
                cpu = cpus[self.exits % len(cpus)]
                os.sched_setaffinity(0, {cpu})  # this thread only: force a migration per run
                self.migrations += len(cpus) > 1
                ex = v.run()
                self.exits += 1
                if isinstance(ex, exits.InterruptedExit):
                    continue
                assert isinstance(ex, exits.MmioExit) and ex.is_write, f"unexpected exit {ex}"
                value = int.from_bytes(ex.data, "little")
                if ex.phys_addr == MAILBOX_BASE + 8:
                    self.mismatches = value
                    return
                if not stopping:
                    self.iterations = value
                if value == self.corrupt_at:
                    # The guest filled ZA with b = seed + iteration - 1: overwrite one row.
                    b = (self.seed + value - 1) & 0xFF
                    v.set_one_reg(regs.sme_za_row(3), bytes([(b + 1) & 0xFF]) * 256)
                if not stopping and time.monotonic() > self.deadline:
                    self.bm.mem.write(STOP_FLAG, (1).to_bytes(8, "little"))
                    stopping = True
        except BaseException as e:  # reported by the test
            self.error = e


def test_sme_state_survives_exits_migration_and_host_sme_users(kvm, request):
    found = require_sme(request, kvm)
    seconds = float(os.environ.get("PYVMM_STRESS_SECONDS", "60"))
    image = guestbuild.build("sme_stress")
    hostloop = guestbuild.build_linux_program("sme_hostloop")

    # Host SME users: one per CPU, restarted as they finish, until the guests stop.
    host_runs, host_failures, stop_hosts = [0], [], threading.Event()

    def host_user():
        while not stop_hosts.is_set():
            rc = subprocess.run([hostloop]).returncode
            host_runs[0] += 1
            if rc != 0:
                host_failures.append(rc)

    hosts = [threading.Thread(target=host_user) for _ in range(len(os.sched_getaffinity(0)))]
    start = time.monotonic()
    deadline = start + seconds
    vcpus = [Vcpu(kvm, found, seed, image, deadline) for seed in (0x11, 0xC3)]
    for t in hosts + vcpus:
        t.start()
    for t in vcpus:
        t.join(timeout=seconds + 600)
    stop_hosts.set()
    for t in hosts:
        t.join(timeout=600)
    elapsed = time.monotonic() - start
    for v in vcpus:
        v.bm.close()

    lines = [f"SME stress: {elapsed:.1f} s, SVL {vcpus[0].svl_bits} bits, "
             f"host SME program runs {host_runs[0]} (failures {len(host_failures)})"]
    for v in vcpus:
        lines.append(f"  {v.name}: {v.iterations} iterations, {v.exits} exits, "
                     f"{v.migrations} forced migrations, mismatches {v.mismatches}")
    print("\n" + "\n".join(lines))
    for v in vcpus:
        assert v.error is None, f"{v.name}: {v.error!r}"
        assert v.mismatches == 0, "\n".join(lines)
        assert v.iterations > 10, "\n".join(lines)
    assert host_runs[0] > 0 and not host_failures, "\n".join(lines)
    assert elapsed >= seconds


def test_stress_detects_a_corrupted_za_row(kvm, request):
    """The checker can fail: a ZA row changed by the VMM during one exit is
    counted as exactly one mismatch."""
    found = require_sme(request, kvm)
    v = Vcpu(kvm, found, 0x42, guestbuild.build("sme_stress"), time.monotonic() + 3, corrupt_at=5)
    v.start()
    v.join(timeout=600)
    v.bm.close()
    assert v.error is None and v.mismatches == 1, (v.error, v.mismatches)

"""Snapshot/restore of a bare-metal SVE guest mid-computation: the restored
guest, in a new process, reaches the same result as an uninterrupted run."""
import json
import os
import struct
import subprocess
import sys

import pytest

from pyvmm.arm64 import regs
from pyvmm._ffi import const
from pyvmm.machine.baremetal import RAM_BASE, BareMetal
from pyvmm.snapshot import format as fmt
from pyvmm.snapshot import vm_snapshot
from support import guestbuild

pytestmark = pytest.mark.kvm

FEATURES = [const("KVM_ARM_VCPU_PSCI_0_2"), const("KVM_ARM_VCPU_SVE")]
VQ = 4  # 512-bit SVE
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _start(kvm):
    bm = BareMetal(kvm)
    bm.load(guestbuild.build("sve_loop"))
    bm.init_vcpu([const("KVM_ARM_VCPU_SVE")])
    v = bm.vcpu
    host = regs.vls_decode(v.get_one_reg(regs.SVE_VLS))
    v.set_one_reg(regs.SVE_VLS, regs.vls_encode(regs.vls_cut(host, VQ)))
    v.arm_vcpu_finalize(4)
    v.set_reg(regs.ZCR_EL1, VQ - 1)
    lanes = 2 * VQ
    v.set_one_reg(regs.sve_z(0), struct.pack(f"<{lanes}Q", *range(1, lanes + 1)).ljust(256, b"\0"))
    v.set_one_reg(regs.sve_z(1), struct.pack(f"<{lanes}Q", *[1000 * (i + 1) for i in range(lanes)]).ljust(256, b"\0"))
    bm.enter_at(RAM_BASE)
    return bm


def _run_until_report(bm, n):
    """Run until the guest has reported iteration n (one MMIO exit each)."""
    assert bm.run(pause_at_report=n).stopped_by == "paused"


def test_snapshot_mid_computation_restores_in_a_new_process(kvm, tmp_path):
    with _start(kvm) as bm:
        reference = bm.run()
        ref_z2 = bm.vcpu.get_one_reg(regs.sve_z(2))
    assert reference.reports[:16] == list(range(1, 17)) and reference.status == 0

    snap_path = tmp_path / "mid.snap"
    later_path = tmp_path / "later.snap"
    with _start(kvm) as bm:
        _run_until_report(bm, 6)
        fmt.save(str(snap_path), vm_snapshot.take(bm, FEATURES))
        _run_until_report(bm, 10)
        fmt.save(str(later_path), vm_snapshot.take(bm, FEATURES))

    # pyvmm inspect / diff on the real snapshots.
    p = subprocess.run([sys.executable, "-m", "pyvmm", "inspect", str(snap_path)],
                       capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0 and "SVE VLs [128, 256, 384, 512]" in p.stdout and " X5 " in p.stdout
    d = subprocess.run([sys.executable, "-m", "pyvmm", "diff", str(snap_path), str(later_path)],
                       capture_output=True, text=True, cwd=ROOT)
    assert d.returncode == 3
    assert "vcpu0.X5: 0x6 -> 0xa" in d.stdout and "vcpu0.Z2:" in d.stdout and "pages differ" in d.stdout

    # Restore in a fresh process and let the guest finish.
    script = f"""
import json, sys
sys.path.insert(0, {os.path.join(ROOT, 'tests')!r})
from pyvmm.arm64 import regs
from pyvmm.kvm import open_kvm
from pyvmm.snapshot import format as fmt, vm_snapshot
kvm = open_kvm()
bm = vm_snapshot.restore(kvm, fmt.load({str(snap_path)!r}), clock="hide")
out = bm.run()
print(json.dumps({{"reports": out.reports, "status": out.status,
                   "z2": bm.vcpu.get_one_reg(regs.sve_z(2)).hex(),
                   "counter_page": bm.mem.read(0x80000000, 4096).hex()}}))
"""
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stderr
    restored = json.loads(p.stdout.strip().splitlines()[-1])
    assert restored["status"] == 0
    assert restored["reports"] == reference.reports[6:]
    assert bytes.fromhex(restored["z2"]) == ref_z2


def test_snapshot_refused_when_vector_lengths_cannot_be_offered(kvm, tmp_path):
    with _start(kvm) as bm:
        snap = vm_snapshot.take(bm, FEATURES)
    snap.manifest["vcpus"][0]["sve_vls"] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]
    with pytest.raises(Exception, match="cannot offer the snapshot's SVE vector lengths"):
        vm_snapshot.restore(kvm, snap)

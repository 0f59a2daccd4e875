"""A live SME guest moves to a new VM: the payload of test_sme_guest.py
stops at its checkpoint with SM/ZA on, pyvmm writes pattern B, the snapshot
layer saves the vCPU and RAM (restoring through the §6 plan) into a fresh
VM, and the guest, resumed there, finds pattern B in every register.

Marked sme_kernel: needs the project's kernel (see test_sme_abi.py)."""
import pytest

from pyvmm import vecstate
from pyvmm._ffi import const
from pyvmm.machine.baremetal import BareMetal
from pyvmm.snapshot import format as fmt
from pyvmm.snapshot import vm_snapshot
from support import guestbuild
from support.sme_guest import require_sme
from support.sme_guest import CHECKPOINT, SEED_B, expected_registers, start_payload

pytestmark = [pytest.mark.kvm, pytest.mark.sme_kernel]

# (SVL bits, SM, ZA, with SVE): the largest and smallest SVLs, every SM/ZA state, both configurations
CASES = [(2048, 1, 1, True), (2048, 0, 1, False), (128, 1, 0, False), (512, 0, 0, True),
         (128, 1, 1, False), (1024, 0, 1, True)]


@pytest.fixture(scope="module")
def host(request):
    from pyvmm.kvm import open_kvm

    with open_kvm() as kvm:
        return require_sme(request, kvm)


@pytest.mark.parametrize("svl, sm, za, with_sve", CASES,
                         ids=[f"{s}-sm{a}za{b}-{'sve+sme' if v else 'sme-only'}" for s, a, b, v in CASES])
def test_live_sme_guest_restored_in_a_new_vm(kvm, host, tmp_path, svl, sm, za, with_sve):
    if svl // 128 not in host.vqs:
        pytest.skip(f"the host offers no SVL {svl}")
    features = [const("KVM_ARM_VCPU_PSCI_0_2")] + ([const("KVM_ARM_VCPU_SVE")] if with_sve else []) + [host.bit]
    with BareMetal(kvm) as bm:
        _, st = start_payload(bm, host, guestbuild.build("sme_state"), svl, sm, za, with_sve)
        out = bm.run()
        assert (out.stopped_by, out.status) == ("done", CHECKPOINT), out
        saved = st.save()
        new = vecstate.SavedVecState(**{**saved.__dict__,
                                        "registers": {**saved.registers, **expected_registers(saved, SEED_B)}})
        st.restore(new)
        path = tmp_path / "sme.snap"
        fmt.save(str(path), vm_snapshot.take(bm, features, host.bit))
    with vm_snapshot.restore(kvm, fmt.load(str(path))) as bm2:
        moved = vecstate.VecState(bm2.vcpu, host.bit)
        assert moved.svcr == sm | za << 1
        assert moved.save() == new
        out = bm2.run()
    assert out.stopped_by == "done", out
    svcr_seen, mismatches = out.reports[:2]
    assert svcr_seen == sm | za << 1
    assert mismatches == 0 and out.status == 0, f"the guest found {mismatches} bytes unlike pattern B"

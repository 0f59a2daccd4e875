"""A bare-metal guest assembled from guests/baremetal/sme_state.s does
SMSTART (SM and/or ZA), fills ZA, ZT0 and Z/P/FFR (or V) with pattern A and
stops at a checkpoint; pyvmm reads every register byte-exact, writes
pattern B through the §6 restore plan, and the guest checks pattern B and
reports. Every SME vector length the host offers x the four SM/ZA states x
with and without SVE (one VM each, a few hundred ioctls at most).

Marked sme_kernel: needs the project's kernel (see test_sme_abi.py)."""

import pytest

from pyvmm.arm64 import regs
from pyvmm import vecstate
from pyvmm.machine.baremetal import BareMetal
from support import guestbuild
from support.sme_guest import (CHECKPOINT, SEED_A, SEED_B, STATES, SVLS, expected_registers, require_sme,
                               start_payload)

pytestmark = [pytest.mark.kvm, pytest.mark.sme_kernel]

@pytest.fixture(scope="module")
def host(request):
    from pyvmm.kvm import open_kvm

    with open_kvm() as kvm:
        found = require_sme(request, kvm)
    return found


@pytest.fixture(scope="module")
def image():
    return guestbuild.build("sme_state")


@pytest.mark.parametrize("with_sve", [True, False], ids=["sve+sme", "sme-only"])
@pytest.mark.parametrize("sm, za", STATES, ids=[f"sm{a}za{b}" for a, b in STATES])
@pytest.mark.parametrize("svl", SVLS)
def test_guest_and_vmm_exchange_sme_state(kvm, host, image, svl, sm, za, with_sve):
    if svl // 128 not in host.vqs:
        pytest.skip(f"the host offers no SVL {svl} (offers {host.vls_bits})")
    with BareMetal(kvm) as bm:
        cfg, st = start_payload(bm, host, image, svl, sm, za, with_sve)
        out = bm.run()
        assert (out.stopped_by, out.status) == ("done", CHECKPOINT), out
        svl_b, z_bytes = out.reports[:2]
        assert svl_b == svl // 8
        assert z_bytes == (svl // 8 if sm else (16 * max(cfg.sve_vqs) if with_sve else 0))

        # pyvmm reads the guest's pattern A byte-exact, in the guest's mode
        assert st.svcr == sm | za << 1
        saved = st.save()
        want = expected_registers(saved, SEED_A)
        assert ("V0" in saved.registers) == (not with_sve and not sm)
        assert (f"ZA[{svl // 8 - 1}]" in saved.registers) == bool(za)
        assert ("ZT0" in saved.registers) == bool(za and st.sme2)
        assert ("FFR" in saved.registers) == bool((sm and st.fa64) or (not sm and with_sve))
        bad = [n for n in want if saved.registers[n] != want[n]]
        assert not bad, f"pyvmm read {len(bad)} registers unlike the guest's pattern: {bad[:8]}"
        # beyond the vector length the buffers read as zero (§3)
        for name in ("Z0", "P0", "ZA[0]"):
            if name in saved.registers:
                rid = regs.parse(name)
                full = bm.vcpu.get_one_reg(rid)
                assert not any(full[len(saved.registers[name]):]), name

        # pyvmm writes pattern B through the restore plan; the guest checks it
        new = vecstate.SavedVecState(**{**saved.__dict__,
                                        "registers": {**saved.registers, **expected_registers(saved, SEED_B)}})
        st.restore(new)
        out = bm.run()
        assert out.stopped_by == "done", out
        svcr_seen, mismatches = out.reports[:2]  # a new Outcome per run()
        assert svcr_seen == sm | za << 1
        assert mismatches == 0 and out.status == 0, f"the guest found {mismatches} bytes unlike pattern B"

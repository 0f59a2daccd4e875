"""The §6 restore order for every SM/ZA combination and vCPU configuration,
computed from the saved SVCR (ABI page §5, §6)."""
import itertools

import pytest

from pyvmm.arm64 import regs, restore_plan as rp
from pyvmm.errors import UsageProblem

STATES = list(itertools.product((0, 1), (0, 1)))
COMBOS = [(c, sm, za) for c in ("sve+sme", "sme") for sm, za in STATES] + [("sve", 0, 0)]


def _plan(config, sm, za, fresh=True, **kw):
    return rp.plan(rp.VecShape.from_options(config, sm, za, svl_bits=kw.pop("svl", 512),
                                sve_vl_bits=kw.pop("vl", 256), sme_bit=10, **kw), fresh=fresh)


def _pos(ids, reg_id):
    return ids.index(reg_id)


@pytest.mark.parametrize("config, sm, za", COMBOS)
@pytest.mark.parametrize("fresh", [True, False])
def test_order_is_svcr_then_fp_then_vectors_then_za(config, sm, za, fresh):
    p = _plan(config, sm, za, fresh=fresh, fpmr=True)
    ids = p.ids()
    assert len(ids) == len(set(ids)), "no register is written twice"
    sme = "sme" in config
    fpsr, fpcr = regs.core("FPSR"), regs.core("FPCR")
    first_vec = min(_pos(ids, i) for i in rp.vector_ids(p.shape))
    if sme:
        svcr = _pos(ids, regs.SVCR)
        # SVCR is the first register written after finalisation (§6.5).
        after_final = [i for i in ids if i not in (regs.SVE_VLS, regs.SME_VLS, regs.ID_AA64PFR1_EL1,
                                                   regs.ID_AA64SMFR0_EL1, regs.SMIDR_EL1)]
        assert after_final[0] == regs.SVCR
        assert svcr < _pos(ids, fpsr) < first_vec
        assert svcr < _pos(ids, regs.FPMR) < first_vec
    else:
        assert regs.SVCR not in ids
    assert _pos(ids, fpsr) < first_vec and _pos(ids, fpcr) < first_vec
    za_rows = [i for i in ids if regs.decode(i).kind == "sme_za"]
    if sme and za:
        assert len(za_rows) == 512 // 8
        assert min(_pos(ids, i) for i in za_rows) > max(_pos(ids, i) for i in rp.vector_ids(p.shape))
        assert _pos(ids, regs.sme_zt(0)) > max(_pos(ids, i) for i in za_rows)
    else:
        assert not za_rows and regs.sme_zt(0) not in ids
    if fresh:
        actions = [s.action for s in p.steps]
        assert actions[0] == "init" and "finalize" in actions
        fin = actions.index("finalize")
        # VLS and ID registers are written before FINALIZE, data after it.
        for s in p.steps[:fin]:
            for i in s.ids:
                assert regs.decode(i).kind in ("sve_vls", "sme_vls", "sysreg")
        assert p.steps[0].features == tuple([2] + ([4] if "sve" in config else []) + ([10] if sme else []))
    else:
        assert all(s.action in ("set", "skip") for s in p.steps)


@pytest.mark.parametrize("config, sm, za", COMBOS)
def test_vector_set_follows_access_table(config, sm, za):
    """§5: which of V / Z,P / FFR exist for the saved SVCR."""
    for fa64 in (True, False):
        p = _plan(config, sm, za, fa64=fa64)
        kinds = {regs.decode(i).kind for i in p.ids()}
        has_v = any(regs.decode(i).name == "V0" for i in p.ids())
        if config == "sme" and not sm:
            assert has_v and "sve_z" not in kinds and "sve_p" not in kinds and "sve_ffr" not in kinds
        else:
            assert not has_v
            assert {"sve_z", "sve_p"} <= kinds
            assert ("sve_ffr" in kinds) == (not sm or fa64)


@pytest.mark.parametrize("sme2", [True, False])
def test_zt0_only_with_sme2(sme2):
    ids = _plan("sve+sme", 1, 1, sme2=sme2).ids()
    assert (regs.sme_zt(0) in ids) == sme2


@pytest.mark.parametrize("svl", [128 * q for q in range(1, 17)])
def test_za_rows_follow_svl(svl):
    ids = _plan("sme", 1, 1, svl=svl).ids()
    rows = [regs.decode(i).index for i in ids if regs.decode(i).kind == "sme_za"]
    assert rows == list(range(svl // 8))


def test_plan_ignores_destination_list_order():
    """Register-list order puts SVCR after the vector registers (§6); the
    plan does not: its SVCR comes before any Z/P/FFR or ZA row."""
    ids = _plan("sve+sme", 1, 1).ids()
    assert ids.index(regs.SVCR) < ids.index(regs.sve_z(0)) < ids.index(regs.sme_za_row(0))


@pytest.mark.parametrize("svcr", [1, 2, 3])
def test_sve_only_with_svcr_is_refused(svcr):
    with pytest.raises(UsageProblem, match="SVE-only"):
        rp.plan(rp.VecShape(sve=True, sme=False, svcr=svcr, sve_vqs=(1, 2)))


def test_reserved_svcr_bits_refused():
    with pytest.raises(UsageProblem, match="reserved"):
        rp.plan(rp.VecShape(sve=True, sme=True, svcr=4, sve_vqs=(1,), sme_vqs=(1,)))


def test_neither_feature_refused():
    with pytest.raises(UsageProblem):
        rp.plan(rp.VecShape(sve=False, sme=False))


@pytest.mark.parametrize("config, sm, za", COMBOS)
def test_explain_names_every_step_with_a_reason(config, sm, za):
    text = _plan(config, sm, za).explain()
    assert text.count("why:") == len(_plan(config, sm, za).steps)
    assert "§6" in text
    if "sme" in config:
        assert "SVCR" in text.splitlines()[0]


def test_name_ranges():
    ids = [regs.sve_z(n) for n in range(32)] + [regs.sve_p(n) for n in range(16)] + [regs.sve_ffr()]
    assert rp.name_ranges(ids) == "Z0-Z31, P0-P15, FFR"
    assert rp.name_ranges([regs.sme_za_row(n) for n in range(4)] + [regs.sme_zt(0)]) == "ZA[0]-ZA[3], ZT0"


def test_to_dict_is_plain():
    import json

    d = _plan("sve+sme", 1, 0).to_dict()
    json.dumps(d)
    assert d["steps"][0]["action"] == "init"

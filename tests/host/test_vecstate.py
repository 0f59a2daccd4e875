"""The vector state model: ZA tile views against the Arm ARM layout, mode-
dependent Z/P/FFR/V access, save as plain data, restore through the §6 plan
(on the model kernel of test_sme_fake.py)."""
import itertools
import json

import pytest

from pyvmm.arm64 import regs
from pyvmm import sme, vecstate
from pyvmm.errors import HostUnsupported, KvmError, UsageProblem
from support.fake_kvm import SME_BIT, FakeKvm

pytestmark = pytest.mark.usefixtures("fake_syscalls")  # FakeKvm vCPUs go through the fd layer

SVLS = [16 * q for q in range(1, 17)]  # SVL in bytes, 128..2048 bits


# ---- tiles (pure) ---------------------------------------------------------------

def test_tile_names_are_the_architectures():
    names = vecstate.tile_names()
    assert names[0] == "ZA0.B"
    assert [n for n in names if n.endswith(".H")] == ["ZA0.H", "ZA1.H"]
    assert len([n for n in names if n.endswith(".S")]) == 4
    assert len([n for n in names if n.endswith(".D")]) == 8
    assert [n for n in names if n.endswith(".Q")][-1] == "ZA15.Q"
    assert len(names) == 1 + 2 + 4 + 8 + 16


@pytest.mark.parametrize("svl_b", SVLS)
def test_tiles_partition_za_for_each_element_size(svl_b):
    """Arm ARM: the tiles of one element size together are exactly the ZA
    array, each row in one tile; ZAt.<T> slice i is row i*esize + t."""
    for suffix, esize in vecstate.ELEMENT_BYTES.items():
        seen = []
        for t in range(esize):
            rows = vecstate.tile_rows(f"ZA{t}.{suffix}", svl_b)
            assert len(rows) == svl_b // esize  # dim = SVL_B / esize slices
            assert rows == [i * esize + t for i in range(svl_b // esize)]
            seen += rows
        assert sorted(seen) == list(range(svl_b))


def test_known_layouts():
    # SVL 256 bits = 32 bytes: ZA0.H is the even rows, ZA1.H the odd ones.
    assert vecstate.tile_rows("ZA0.H", 32) == list(range(0, 32, 2))
    assert vecstate.tile_rows("ZA1.H", 32) == list(range(1, 32, 2))
    assert vecstate.tile_rows("ZA3.S", 32) == [3, 7, 11, 15, 19, 23, 27, 31]
    assert vecstate.tile_rows("ZA7.D", 32) == [7, 15, 23, 31]
    assert vecstate.tile_rows("ZA15.Q", 32) == [15, 31]
    assert vecstate.tile_rows("ZA0.B", 16) == list(range(16))
    assert vecstate.tile_rows("za2.d", 16) == [2, 10]  # case-insensitive


@pytest.mark.parametrize("bad", ["ZA1.B", "ZA2.H", "ZA4.S", "ZA8.D", "ZA16.Q", "ZT0", "ZA0"])
def test_bad_tile_names(bad):
    with pytest.raises(UsageProblem):
        vecstate.tile_rows(bad, 32)


def _za(svl_b):
    return [bytes((r * 31 + j) & 0xFF for j in range(svl_b)) for r in range(svl_b)]


@pytest.mark.parametrize("svl_b", [16, 32, 64, 256])
def test_tile_elements_horizontal_and_vertical(svl_b):
    za = _za(svl_b)
    for name in vecstate.tile_names():
        tile = vecstate.Tile(name, za)
        e = tile.esize
        assert tile.dim == svl_b // e
        for i in (0, tile.dim - 1):
            row = za[tile.rows[i]]
            assert tile.horizontal(i) == row
            for j in (0, tile.dim - 1):
                assert tile.element(i, j) == int.from_bytes(row[j * e:(j + 1) * e], "little")
        # vertical slice j: element j of every horizontal slice, top to bottom
        j = tile.dim // 2
        v = tile.vertical(j)
        assert len(v) == svl_b
        assert [int.from_bytes(v[i * e:(i + 1) * e], "little") for i in range(tile.dim)] == \
            [tile.element(i, j) for i in range(tile.dim)]


def test_tile_matrix_of_za0_s_at_128_bits():
    # SVL 128: 16 rows of 16 bytes; ZA0.S is rows 0, 4, 8, 12, 4x4 words.
    za = [bytes([r] * 16) for r in range(16)]
    m = vecstate.Tile("ZA0.S", za).matrix()
    assert m == [[0x00000000] * 4, [0x04040404] * 4, [0x08080808] * 4, [0x0C0C0C0C] * 4]


# ---- live model on the model kernel --------------------------------------------------

def _vcpu(kvm, sve=True, sme_on=True, sve_max=None, sme_max=None):
    v = kvm.create_vm().create_vcpu(0)
    sme.configure_vcpu(v, SME_BIT if sme_on else None, sve_max, sme_max, sve=sve)
    return v


CONFIGS = [("sve+sme", True), ("sme", False)]
STATES = list(itertools.product((0, 1), (0, 1)))


@pytest.mark.parametrize("config, with_sve", CONFIGS)
@pytest.mark.parametrize("sm, za", STATES)
def test_mode_dependent_lengths(config, with_sve, sm, za):
    kvm = FakeKvm(sve_vqs=range(1, 5), sme_vqs=(1, 2, 4, 8))
    st = vecstate.VecState(_vcpu(kvm, sve=with_sve), SME_BIT)
    assert st.config == config
    st.set_svcr(sm | za << 1)
    if sm:
        assert st.vl_bytes() == 128 and len(st.z(0)) == 128 and len(st.p(15)) == 16
    elif with_sve:
        assert st.vl_bytes() == 64 and len(st.z(31)) == 64 and len(st.ffr()) == 8
    else:
        assert st.vl_bytes() == 0
        st.set_v(3, b"\x01" * 16)
        assert st.v(3) == b"\x01" * 16
        with pytest.raises(KvmError):
            st.z(0)
    if za:
        rows = [bytes([r]) * 128 for r in range(128)]
        st.set_za(rows)
        assert st.za() == rows
        assert st.tile("ZA1.H").horizontal(2) == rows[5]
        st.set_zt0(b"\x09" * 64)
        assert st.zt0() == b"\x09" * 64
    else:
        with pytest.raises(KvmError) as ei:
            st.za_row(0)
        assert "SVCR.ZA = 0" in str(ei.value)


def test_set_checks_data_length_of_the_mode():
    st = vecstate.VecState(_vcpu(FakeKvm(sve_vqs=(1, 2), sme_vqs=(1, 2, 4))), SME_BIT)
    with pytest.raises(UsageProblem, match="32 bytes"):
        st.set_z(0, b"\0" * 64)
    st.set_svcr(1)
    st.set_z(0, b"\1" * 64)


def test_ffr_in_streaming_mode_needs_fa64():
    st = vecstate.VecState(_vcpu(FakeKvm(fa64=False)), SME_BIT)
    assert not st.fa64
    assert st.has_ffr(0) and not st.has_ffr(1)
    st.set_svcr(1)
    with pytest.raises(KvmError) as ei:
        st.ffr()
    assert "FA64" in str(ei.value)


def _fill(st, seed):
    saved = st.save()
    for k, name in enumerate(saved.registers):
        rid = regs.parse(name)
        kind = regs.decode(rid).kind
        n = len(saved.registers[name])
        if kind == "sve_ffr":
            pat = b"\xff" * (n // 2) + bytes(n - n // 2)
        elif kind in ("sve_z", "sve_p", "sme_za", "sme_zt") or name.startswith("V"):
            pat = bytes((seed + k * 13 + j * 7) & 0xFF for j in range(n))
        else:
            continue
        st.vcpu.set_one_reg(rid, pat.ljust(regs.size_of(rid), b"\0"))
    st.set_control("TPIDR2_EL0", 0xFEEDFACE)
    st.set_control("FPCR", 0x3000000)


@pytest.mark.parametrize("config, with_sve", CONFIGS)
@pytest.mark.parametrize("sm, za", STATES)
def test_save_json_restore_fresh_round_trip(config, with_sve, sm, za):
    kvm = FakeKvm(sve_vqs=range(1, 3), sme_vqs=(1, 2, 4))
    st = vecstate.VecState(_vcpu(kvm, sve=with_sve), SME_BIT)
    st.set_svcr(sm | za << 1)
    _fill(st, seed=sm * 2 + za)
    saved = st.save()
    # Plain, serialisable
    text = saved.to_json()
    again = vecstate.SavedVecState.from_json(text)
    assert again == saved
    assert json.loads(text)["svcr"] == sm | za << 1
    n_za = sum(1 for n in saved.registers if n.startswith("ZA["))
    assert n_za == (64 if za else 0)
    assert ("ZT0" in saved.registers) == bool(za)
    assert ("V0" in saved.registers) == (not with_sve and not sm)
    dst = vecstate.restore_fresh(kvm.create_vm().create_vcpu(0), again)
    assert dst.save() == saved


def test_restore_in_place_follows_plan_even_if_destination_svcr_differs():
    kvm = FakeKvm()
    st = vecstate.VecState(_vcpu(kvm), SME_BIT)
    st.set_svcr(3)
    _fill(st, 5)
    saved = st.save()
    st.set_svcr(0)  # the destination is now in another mode: ZA gone, Z zeroed
    st.restore(saved)
    assert st.save() == saved


def test_list_order_restore_loses_data_which_the_plan_keeps():
    """Why §6 exists: writing in KVM_GET_REG_LIST order (SVCR after the vector
    registers) into a fresh vCPU loses the streaming Z registers."""
    kvm = FakeKvm()
    src = vecstate.VecState(_vcpu(kvm), SME_BIT)
    src.set_svcr(1)
    _fill(src, 9)
    saved = src.save()
    naive = _vcpu(kvm)
    lst = src.vcpu.get_reg_list()
    for rid in lst:
        name = regs.name(rid)
        if name in saved.registers and regs.decode(rid).kind != "sysreg" or name == "SVCR":
            try:
                naive.set_one_reg(rid, saved.registers[name].ljust(regs.size_of(rid), b"\0"))
            except KvmError:
                pass
    assert vecstate.VecState(naive, SME_BIT).z(0) != saved.registers["Z0"]
    good = vecstate.restore_fresh(kvm.create_vm().create_vcpu(0), saved)
    assert good.z(0) == saved.registers["Z0"]


def test_saved_tile_view():
    kvm = FakeKvm(sme_vqs=(1,))
    st = vecstate.VecState(_vcpu(kvm), SME_BIT)
    st.set_svcr(2)
    rows = [bytes([r]) * 16 for r in range(16)]
    st.set_za(rows)
    saved = st.save()
    assert saved.tile("ZA3.S").rows == [3, 7, 11, 15]
    assert saved.tile("ZA0.B").horizontal(9) == rows[9]
    st.set_svcr(0)
    with pytest.raises(UsageProblem, match="ZA off"):
        st.save().tile("ZA0.B")


def test_restore_refuses_a_length_the_host_cannot_offer():
    big = FakeKvm(sme_vqs=(1, 2, 4, 8, 16))
    st = vecstate.VecState(_vcpu(big), SME_BIT)
    saved = st.save()
    small = FakeKvm(sme_vqs=(1, 2, 4))
    with pytest.raises(HostUnsupported, match="512"):
        vecstate.restore_fresh(small.create_vm().create_vcpu(0), saved)


def test_from_dict_refuses_other_formats():
    with pytest.raises(UsageProblem):
        vecstate.SavedVecState.from_dict({"format": "other"})
    with pytest.raises(UsageProblem, match="version"):
        vecstate.SavedVecState.from_dict({"format": "pyvmm-vecstate", "version": 99})


# ---- configure_vcpu -------------------------------------------------------------------

def test_configure_vcpu_cuts_and_finalises_once():
    kvm = FakeKvm(sve_vqs=range(1, 17), sme_vqs=(1, 2, 4, 8, 16))
    v = kvm.create_vm().create_vcpu(0)
    cfg = sme.configure_vcpu(v, SME_BIT, 512, 256)
    assert cfg.sve_vqs == (1, 2, 3, 4) and cfg.sme_vqs == (1, 2)
    assert v.finalized
    with pytest.raises(KvmError) as ei:
        v.arm_vcpu_finalize(4)
    assert "already finalised" in str(ei.value)


def test_configure_vcpu_sme_without_sve():
    v = FakeKvm().create_vm().create_vcpu(0)
    cfg = sme.configure_vcpu(v, SME_BIT, None, 2048, sve=False)
    assert not cfg.sve and cfg.sme_vqs == (1, 2, 4, 8, 16)
    assert not v.has_sve and v.has_sme


def test_configure_vcpu_refuses_unoffered_length_with_the_list():
    v = FakeKvm(sme_vqs=(1, 2, 4)).create_vm().create_vcpu(0)
    with pytest.raises(HostUnsupported) as ei:
        sme.configure_vcpu(v, SME_BIT, None, 384)
    assert "128, 256, 512" in str(ei.value) and ei.value.exit_status == 1


@pytest.mark.parametrize("args, kw, match", [
    ((None, None, 512), {}, "SME is not enabled"),
    ((None, None, None), {"sve": False}, "needs SME"),
    ((SME_BIT, 256, None), {"sve": False}, "no-sve"),
    ((SME_BIT, None, 100), {}, "multiple of 128"),
])
def test_configure_vcpu_usage_errors(args, kw, match):
    v = FakeKvm().create_vm().create_vcpu(0)
    with pytest.raises(UsageProblem, match=match):
        sme.configure_vcpu(v, *args, **kw)
    assert not v.inited


def test_batch_failures_are_kvm_errors_with_the_hint():
    st = vecstate.VecState(_vcpu(FakeKvm()), SME_BIT)
    with pytest.raises(KvmError) as ei:
        st.za()  # one batch of ZA row reads while ZA is off
    e = ei.value
    assert e.errno == 16 and e.reg == "ZA[0]" and e.ioctl == "KVM_GET_ONE_REG"
    assert "ZA is off in this vCPU" in str(e)


def _overlaps(a, b, svl_b=256):
    return bool(set(vecstate.tile_rows(a, svl_b)) & set(vecstate.tile_rows(b, svl_b)))


@pytest.mark.parametrize("tile, q_tiles", [
    # The SME spec's table of which 128-bit tiles each tile overlaps (DDI 0616, B2.3.2)
    ("ZA0.B", range(16)),
    ("ZA0.H", range(0, 16, 2)),
    ("ZA1.H", range(1, 16, 2)),
    ("ZA0.S", (0, 4, 8, 12)),
    ("ZA1.S", (1, 5, 9, 13)),
    ("ZA3.S", (3, 7, 11, 15)),
    ("ZA3.D", (3, 11)),
    ("ZA7.D", (7, 15)),
])
def test_overlaps_with_128_bit_tiles_match_the_spec(tile, q_tiles):
    for svl_b in (16, 64, 256):
        assert [q for q in range(16) if _overlaps(tile, f"ZA{q}.Q", svl_b)] == list(q_tiles)

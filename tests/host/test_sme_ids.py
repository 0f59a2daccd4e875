"""SME register ids (ABI page §3, §9 worked ids) and VLS bitmaps (§4)."""
import pytest

from pyvmm.arm64 import regs
from pyvmm import sme
from pyvmm.errors import HostUnsupported, UsageProblem

WORKED = {  # ABI page §9
    "Z0": 0x6080000000150000, "Z31": 0x60800000001503E0, "P15": 0x60500000001505E0,
    "FFR": 0x6050000000150600, "ZA[0]": 0x6080000000170000, "ZA[31]": 0x60800000001703E0,
    "ZA[255]": 0x6080000000171FE0, "ZT0": 0x6060000000170600, "SME_VLS": 0x606000000017FFFE,
    "SVCR": 0x603000000013DA12, "V0": 0x6040000000100054, "FPSR": 0x60200000001000D4,
    "FPCR": 0x60200000001000D5,
}
SYSREGS = {  # ABI page §3
    "SMCR_EL1": 0x603000000013C096, "SMPRI_EL1": 0x603000000013C094, "TPIDR2_EL0": 0x603000000013DE85,
    "SMIDR_EL1": 0x603000000013C806, "ID_AA64SMFR0_EL1": 0x603000000013C025,
    "ID_AA64PFR1_EL1": 0x603000000013C021, "FPMR": 0x603000000013DA22,
}


@pytest.mark.parametrize("name, reg_id", list(WORKED.items()) + list(SYSREGS.items()))
def test_worked_ids_both_ways(name, reg_id):
    assert regs.parse(name) == reg_id
    assert regs.name(reg_id) == name


def test_constructors_match_worked_ids():
    assert regs.sve_z(31) == WORKED["Z31"]
    assert regs.sme_za_row(255) == WORKED["ZA[255]"]
    assert regs.sme_zt(0) == WORKED["ZT0"]
    assert regs.SME_VLS == WORKED["SME_VLS"] and regs.SVCR == WORKED["SVCR"]
    assert regs.SVE_VLS == 0x606000000015FFFF


def test_za_row_48_and_zt0_differ_only_in_size():
    za48, zt0 = regs.sme_za_row(48), regs.sme_zt(0)
    assert za48 & 0xFFFF == zt0 & 0xFFFF == 0x0600
    assert regs.decode(za48).kind == "sme_za" and regs.decode(za48).index == 48
    assert regs.decode(zt0).kind == "sme_zt"
    assert regs.size_of(za48) == 256 and regs.size_of(zt0) == 64


def test_slices_are_named_and_decoded():
    d = regs.decode(regs.sme_za_row(3, 1))
    assert (d.kind, d.index, d.slice) == ("sme_za", 3, 1)
    assert regs.parse(regs.name(regs.sme_za_row(3, 1))) == regs.sme_za_row(3, 1)


@pytest.mark.parametrize("vqs", [[1], [1, 2, 3, 4], list(range(1, 17)), [2, 4], [1, 2, 4, 8, 16], [64, 65, 512]])
def test_vls_round_trip(vqs):
    buf = regs.vls_encode(vqs)
    assert len(buf) == 64
    assert regs.vls_decode(buf) == sorted(vqs)


def test_vls_bit_layout():
    # VQ q is bit (q-1) % 64 of u64 word (q-1) // 64, little-endian words (§4).
    assert regs.vls_encode([1])[:8] == (1).to_bytes(8, "little")
    assert regs.vls_encode([16])[:8] == (1 << 15).to_bytes(8, "little")
    assert regs.vls_encode([65])[8:16] == (1).to_bytes(8, "little")
    assert regs.vls_encode(range(1, 17))[:8] == (0xFFFF).to_bytes(8, "little")


def test_vls_cut_keeps_sparse_prefix():
    assert regs.vls_cut([1, 2, 4, 8, 16], 4) == [1, 2, 4]
    assert regs.vls_cut([2, 4], 2) == [2]


def test_choose_vqs_refuses_with_the_offered_list():
    assert sme.choose_vqs([1, 2, 4, 8, 16], 512, "SME vector length") == [1, 2, 4]
    with pytest.raises(HostUnsupported) as ei:  # well formed, but this host lacks it: exit 1
        sme.choose_vqs([1, 2, 4, 8, 16], 384, "SME vector length")
    assert "128, 256, 512, 1024, 2048" in str(ei.value) and ei.value.exit_status == 1


@pytest.mark.parametrize("bad", ["100", "0", "2176", "abc", 64])
def test_parse_vl_refuses(bad):
    with pytest.raises(UsageProblem):
        sme.parse_vl(bad)

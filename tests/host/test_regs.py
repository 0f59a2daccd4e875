"""Register ids: the ABI page's worked ids, encode/decode identity, no collisions."""
import pytest
from hypothesis import given, settings, strategies as st

from pyvmm.arm64 import regs, sysregs

# ABI page §9 (SVL = 256 bits) and §3.
WORKED = {
    "Z0": 0x6080000000150000, "Z31": 0x60800000001503E0, "P15": 0x60500000001505E0,
    "FFR": 0x6050000000150600, "ZA[0]": 0x6080000000170000, "ZA[31]": 0x60800000001703E0,
    "ZA[255]": 0x6080000000171FE0, "ZT0": 0x6060000000170600, "SME_VLS": 0x606000000017FFFE,
    "SVCR": 0x603000000013DA12, "V0": 0x6040000000100054, "FPSR": 0x60200000001000D4,
    "FPCR": 0x60200000001000D5, "SVE_VLS": 0x606000000015FFFF, "SMCR_EL1": 0x603000000013C096,
    "SMPRI_EL1": 0x603000000013C094, "TPIDR2_EL0": 0x603000000013DE85, "TPIDR_EL0": 0x603000000013DE82,
    "SMIDR_EL1": 0x603000000013C806, "ID_AA64SMFR0_EL1": 0x603000000013C025,
    "ID_AA64PFR1_EL1": 0x603000000013C021, "FPMR": 0x603000000013DA22,
}


@pytest.mark.parametrize("name,reg_id", sorted(WORKED.items()))
def test_worked_ids_from_the_abi_page(name, reg_id):
    assert regs.parse(name) == reg_id
    assert regs.name(reg_id) == name
    assert regs.decode(reg_id).known


def test_za_row_48_and_zt0_differ_only_in_size():
    za48, zt0 = regs.sme_za_row(48), regs.sme_zt(0)
    assert za48 & 0xFFFF == zt0 & 0xFFFF == 0x0600
    assert za48 != zt0
    assert regs.decode(za48).kind == "sme_za" and regs.decode(za48).index == 48
    assert regs.decode(zt0).kind == "sme_zt"
    assert regs.size_of(za48) == 256 and regs.size_of(zt0) == 64


def test_buffer_sizes_follow_the_size_field():
    assert regs.size_of(regs.sve_z(3)) == 256
    assert regs.size_of(regs.sve_p(3)) == 32
    assert regs.size_of(regs.SVE_VLS) == regs.size_of(regs.SME_VLS) == 64
    assert regs.size_of(regs.core("FPSR")) == 4
    assert regs.size_of(regs.core("V7")) == 16
    assert regs.size_of(regs.SVCR) == 8


def _all_ids():
    ids = [regs.core(n) for n in regs.CORE_OFFSETS]
    ids += [regs.sysreg(*e) for e in sysregs.BY_NAME.values()]
    ids += [regs.fw(n) for n in regs.FW_REGS] + [regs.fw_feat_bmap(n) for n in regs.FW_FEAT_BMAP_REGS]
    ids += [regs.demux_ccsidr(n) for n in range(14)]
    for s in range(32):
        ids += [regs.sve_z(n, s) for n in range(32)] + [regs.sve_p(n, s) for n in range(16)]
        ids += [regs.sve_ffr(s)] + [regs.sme_za_row(n, s) for n in range(256)]
    ids += [regs.sme_zt(n) for n in range(32)] + [regs.SVE_VLS, regs.SME_VLS]
    return ids


def test_ids_never_collide_and_names_are_unique():
    ids = _all_ids()
    assert len(ids) == len(set(ids))
    names = [regs.name(i) for i in ids]
    assert len(names) == len(set(names))
    assert all(regs.decode(i).known for i in ids)


def test_every_named_id_round_trips_through_its_name():
    for reg_id in _all_ids():
        assert regs.parse(regs.name(reg_id)) == reg_id


sysreg_fields = st.tuples(st.integers(0, 3), st.integers(0, 7), st.integers(0, 15),
                          st.integers(0, 15), st.integers(0, 7))


@given(sysreg_fields)
@settings(max_examples=2000)
def test_sysreg_encode_decode_identity(enc):
    reg_id = regs.sysreg(*enc)
    d = regs.decode(reg_id)
    assert d.kind == "sysreg" and d.encoding == enc
    assert regs.parse(d.name) == reg_id


@given(st.sampled_from(["z", "p", "ffr", "za", "zt"]), st.integers(0, 255), st.integers(0, 31))
@settings(max_examples=2000)
def test_vector_encode_decode_identity(kind, n, s):
    build = {"z": lambda: regs.sve_z(n % 32, s), "p": lambda: regs.sve_p(n % 16, s),
             "ffr": lambda: regs.sve_ffr(s), "za": lambda: regs.sme_za_row(n, s),
             "zt": lambda: regs.sme_zt(n % 32)}[kind]
    reg_id = build()
    d = regs.decode(reg_id)
    assert d.known
    assert regs.parse(d.name) == reg_id


@given(st.integers(0, 2**64 - 1))
@settings(max_examples=3000)
def test_decode_never_raises_and_known_ids_round_trip(reg_id):
    d = regs.decode(reg_id)
    assert d.size == 1 << ((reg_id >> 52) & 0xF)
    if d.known:
        assert regs.parse(d.name) == reg_id


def test_unknown_ids_are_values_not_errors():
    d = regs.decode(0x6030000000990000)
    assert not d.known and d.kind == "unknown"
    assert regs.parse(d.name) == 0x6030000000990000


def test_kvm_timer_ids_follow_kvm_meaning():
    # KVM_REG_ARM_TIMER_CNT is encoded (3,3,14,3,2), the architectural CNTV_CVAL_EL0.
    assert regs.sysreg_named("CNTVCT_EL0") == regs.sysreg(3, 3, 14, 3, 2)
    assert regs.sysreg_named("CNTV_CVAL_EL0") == regs.sysreg(3, 3, 14, 0, 2)


def test_reserved_id_space_is_named():
    assert regs.name(regs.sysreg(3, 0, 0, 3, 3)) == "ID_UNALLOCATED_C3_3"
    assert regs.decode(regs.sysreg(3, 0, 0, 3, 3)).known
    assert not regs.decode(regs.sysreg(3, 0, 15, 2, 0)).known
    assert regs.name(regs.sysreg(3, 0, 15, 2, 0)) == "S3_0_C15_C2_0"


@pytest.mark.parametrize("bad", [lambda: regs.sve_z(32), lambda: regs.sve_p(16),
                                 lambda: regs.sme_za_row(256), lambda: regs.sve_z(0, 32),
                                 lambda: regs.sysreg(4, 0, 0, 0, 0)])
def test_constructors_refuse_out_of_range(bad):
    with pytest.raises(ValueError):
        bad()


def test_parse_unknown_name_says_what_to_try():
    with pytest.raises(KeyError, match="try e.g."):
        regs.parse("NOT_A_REG")


@given(st.sets(st.integers(1, 512)))
def test_vls_bitmap_round_trip(vqs):
    buf = regs.vls_encode(vqs)
    assert len(buf) == 64
    assert regs.vls_decode(buf) == sorted(vqs)


def test_vls_layout_matches_abi_page():
    # VQ q is bit (q-1)%64 of word (q-1)//64; VQs 1,2,4 (128, 256, 512 bits) -> 0b1011.
    buf = regs.vls_encode([1, 2, 4])
    assert int.from_bytes(buf[:8], "little") == 0b1011
    assert regs.vls_decode(bytes(8) + (1).to_bytes(8, "little") + bytes(48)) == [65]
    assert regs.vls_cut([1, 2, 4, 8, 16], 4) == [1, 2, 4]


def test_named_sysreg_constants_are_the_encodings_of_their_names():
    # regs.py spells these ids as literals so that `pyvmm run` does not load the sysregs table;
    # each must be what the table says the name encodes to.
    named = {"SVCR": regs.SVCR, "SMCR_EL1": regs.SMCR_EL1, "SMPRI_EL1": regs.SMPRI_EL1,
             "SMIDR_EL1": regs.SMIDR_EL1, "TPIDR2_EL0": regs.TPIDR2_EL0, "TPIDR_EL0": regs.TPIDR_EL0,
             "FPMR": regs.FPMR, "ZCR_EL1": regs.ZCR_EL1, "ID_AA64PFR0_EL1": regs.ID_AA64PFR0_EL1,
             "ID_AA64PFR1_EL1": regs.ID_AA64PFR1_EL1, "ID_AA64SMFR0_EL1": regs.ID_AA64SMFR0_EL1,
             "ID_AA64ZFR0_EL1": regs.ID_AA64ZFR0_EL1, "MPIDR_EL1": regs.MPIDR_EL1, "CNTFRQ_EL0": regs.CNTFRQ_EL0}
    for name, value in named.items():
        assert value == regs.sysreg_named(name), name
    assert regs.GUEST_COUNTERS == (regs.sysreg_named("CNTVCT_EL0"), regs.sysreg_named("CNTPCT_EL0"))
    assert regs.TIMER_CTLS == (regs.sysreg_named("CNTV_CTL_EL0"), regs.sysreg_named("CNTP_CTL_EL0"))

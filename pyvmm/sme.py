"""SME through KVM: discovery of the SME vCPU feature bit and capability, and
vector-length sets. See docs/kvm-sme-abi.md (the ABI page).

The SME feature bit and KVM_CAP_ARM_SME are not settled upstream (ABI page
§2): they are found by probing, never hard-coded; an override can be given
with ``PYVMM_SME_BIT`` / ``PYVMM_SME_CAP`` or the CLI's ``--sme-bit``.
"""
from __future__ import annotations

import errno
import os

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time; type checkers read True)
if TYPE_CHECKING:
    from typing import List, Optional

from ._record import record
from .arm64 import regs
from .arm64.vec import KVM_ARM_VCPU_VEC, VecShape, parse_vl
from ._ffi import const
from .errors import HostUnsupported, KvmError, UsageProblem

# ABI page §2: bits seen in revisions of the series (8, 9, 10) and the rest of
# features[0] that 7.3 leaves free. Bits 0-7 have settled merged meanings.
SME_BIT_CANDIDATES = tuple(range(8, 32))
# 7.3's last merged capability is 251 (KVM_CAP_ARM_PMU_V3_STRICT); SME caps
# are looked for above it (a 7.3 rebase takes 252, ABI page §2).
LAST_MERGED_CAP = 251
SME_CAP_CANDIDATES = tuple(range(LAST_MERGED_CAP + 1, LAST_MERGED_CAP + 33))

ENV_BIT = "PYVMM_SME_BIT"
ENV_CAP = "PYVMM_SME_CAP"


@record(frozen=True)
class SmeDiscovery:
    """Result of probing. ``bit`` is None when the kernel offers no SME."""
    bit: Optional[int]
    cap: Optional[int]
    vqs: tuple  # SME VQs the host offers (SME_VLS after init), () if none
    how: str  # "probed", "override"
    reason: str = ""  # why SME is absent, when it is

    @property
    def present(self) -> bool:
        return self.bit is not None

    @property
    def vls_bits(self) -> List[int]:
        return [128 * q for q in self.vqs]


def _env_int(name: str) -> Optional[int]:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw, 0)
    except ValueError:
        raise UsageProblem(f"{name}={raw!r} is not a number", f"set {name} to e.g. 10, or unset it") from None
    if not 0 <= value < 7 * 32:
        raise UsageProblem(f"{name}={value} is not a vCPU feature bit (0..223)")
    return value


def _try_bit(kvm, bit: int):
    """(init_errno, vls_bytes): create a scratch VM + vCPU with ``bit`` set
    and read SME_VLS. init_errno is 0 when VCPU_INIT succeeded."""
    vm = kvm.create_vm()
    try:
        vcpu = vm.create_vcpu(0)
        try:
            vcpu.arm_vcpu_init([const("KVM_ARM_VCPU_PSCI_0_2"), bit])
        except KvmError as e:
            return e.errno, None
        try:
            return 0, vcpu.get_one_reg(regs.SME_VLS)
        except KvmError as e:
            return 0, e.errno
    finally:
        vm.close()


def discover(kvm, bit_override: Optional[int] = None) -> SmeDiscovery:
    """Find the SME feature bit by probing (ABI page §2): the bit for which
    VCPU_INIT succeeds *and* reading SME_VLS succeeds. An unknown bit fails
    init with ENOENT; a bit meaning something else passes init but the
    SME_VLS read fails with ENOENT. Probed once per :class:`pyvmm.kvm.Kvm`
    handle (its ``probed``), for each override."""
    if bit_override is None:
        bit_override = _env_int(ENV_BIT)
    probed = getattr(kvm, "probed", None)
    key = ("sme", bit_override, os.environ.get(ENV_CAP))
    if probed is not None and key in probed:
        return probed[key]
    found = _discover(kvm, bit_override)
    if probed is not None:
        probed[key] = found
    return found


# ABI page §2: KVM_CAP_ARM_PMU_V3_STRICT (251, Linux 7.3's last merged cap) came with feature
# bit 9 (PMU_V3_STRICT), after bit 8 (HAS_EL2_E2H0, which initialises without its HAS_EL2 and
# then fails the SME_VLS read): a kernel offering that cap has both bits merged, and an SME
# series on it takes a bit above them.
CAP_PMU_V3_STRICT = LAST_MERGED_CAP
MERGED_WITH_LAST_CAP = (8, 9)


def _cache_key() -> tuple:
    return ("sme", None, os.environ.get(ENV_CAP))


def probe_on_vcpu(kvm, vcpu, features) -> tuple:
    """SME discovery (ABI page §2) on ``vcpu``, the first vCPU of the VM that is going to
    run, before anything initialised it: one KVM_ARM_VCPU_INIT with ``features`` (every
    other feature the vCPU gets) and the first candidate bit, instead of scratch VMs
    (start-up time: each costs milliseconds). Only on a kernel offering
    KVM_CAP_ARM_PMU_V3_STRICT, where bits 8 and 9 are merged features and the first
    candidate left is 10; not with a ``PYVMM_SME_BIT`` override, nor when this handle
    probed already. Returns ``(discovery, spoiled)``:

    - INIT fails with ENOENT: the bit is unknown, so no SME (as :func:`discover`
      concludes: bits are allocated in order). A failed INIT changes nothing: ``vcpu``
      is left for its own INIT.
    - INIT succeeds and SME_VLS reads: SME at that bit, and ``vcpu`` stays initialised
      with it, its vector lengths still writable (no FINALIZE yet, ABI page §4).
    - Anything else, or not applicable: ``(None, spoiled)``; the caller uses
      :func:`discover`. ``spoiled``: INIT succeeded with a bit that is not SME (which
      fixes the VM's vCPU features) or failed past the feature check: the caller must
      build a new VM.

    A discovery found here is kept in the handle's ``probed`` like :func:`discover`'s."""
    probed = getattr(kvm, "probed", None)
    if _env_int(ENV_BIT) is not None or (probed is not None and _cache_key() in probed) \
            or kvm.check_extension(CAP_PMU_V3_STRICT) <= 0:
        return None, False
    bit = next(b for b in SME_BIT_CANDIDATES if b not in MERGED_WITH_LAST_CAP)
    skipped = ", ".join(str(b) for b in MERGED_WITH_LAST_CAP)
    try:
        vcpu.arm_vcpu_init([*features, bit])
    except KvmError as e:
        if e.errno != errno.ENOENT:  # after the feature check: what INIT set up is not known
            return None, True
        found = SmeDiscovery(None, None, (), "probed",
                             f"bits {skipped}: merged features (KVM_CAP_ARM_PMU_V3_STRICT is offered); "
                             f"bit {bit}: unknown to the kernel")
    else:
        try:
            vls = vcpu.get_one_reg(regs.SME_VLS)
        except KvmError:
            return None, True
        found = SmeDiscovery(bit, _discover_cap(kvm), tuple(regs.vls_decode(vls)), "probed")
    if probed is not None:
        probed[_cache_key()] = found
    return found, False


def _discover(kvm, bit_override: Optional[int]) -> SmeDiscovery:
    candidates = (bit_override,) if bit_override is not None else SME_BIT_CANDIDATES
    how = "override" if bit_override is not None else "probed"
    reasons = []
    for bit in candidates:
        init_err, vls = _try_bit(kvm, bit)
        if init_err == errno.ENOENT:
            # Bits are allocated in order: the first unknown bit ends the search.
            reasons.append(f"bit {bit}: unknown to the kernel")
            if bit_override is None:
                break
            continue
        if init_err:
            reasons.append(f"bit {bit}: VCPU_INIT {errno.errorcode.get(init_err, init_err)}")
            if init_err == errno.EINVAL and bit_override is not None:
                reasons.append("the host cannot offer SME (ABI page §7)")
            continue
        if isinstance(vls, bytes):
            return SmeDiscovery(bit, _discover_cap(kvm), tuple(regs.vls_decode(vls)), how)
        reasons.append(f"bit {bit}: SME_VLS read {errno.errorcode.get(vls, vls)}")
    return SmeDiscovery(None, None, (), how, "; ".join(reasons) or "no candidate bit")


def _discover_cap(kvm) -> Optional[int]:
    override = os.environ.get(ENV_CAP)
    if override:
        try:
            return int(override, 0)
        except ValueError:
            raise UsageProblem(f"{ENV_CAP}={override!r} is not a number") from None
    for cap in SME_CAP_CANDIDATES:
        if kvm.check_extension(cap) > 0:
            return cap
    return None


def choose_vqs(offered: List[int], max_bits: int, what: str) -> List[int]:
    """Cut the host's VQ set at ``max_bits`` (ABI page §4: the only change KVM
    allows), refusing a length the host does not offer."""
    vq = parse_vl(max_bits, what)
    if vq not in offered:
        offered_bits = ", ".join(str(128 * q) for q in offered) or "none"
        raise HostUnsupported(f"{what} {max_bits} bits is not offered by this host",
                              f"choose one of: {offered_bits}")
    return regs.vls_cut(offered, vq)


# ---- vCPU configuration (ABI page §4) ------------------------------------------

def cut_vls(vcpu, vls_id: int, max_bits: Optional[int], what: str) -> tuple:
    """Read the host's set from ``vls_id`` (SVE_VLS or SME_VLS) and, when
    ``max_bits`` is given, write the set cut at it (ABI page §4: the only
    change KVM allows). A length the host does not offer is refused with the
    list of those it does, before any write."""
    offered = regs.vls_decode(vcpu.get_one_reg(vls_id))
    if max_bits is None:
        return tuple(offered)
    chosen = choose_vqs(offered, max_bits, what)
    if chosen != offered:
        vcpu.set_one_reg(vls_id, regs.vls_encode(chosen))
    return tuple(chosen)


def require_vqs(vcpu, vls_id: int, wanted, what: str) -> None:
    """Set ``vls_id`` to exactly ``wanted`` (a saved set), refusing with the
    reason when the host cannot offer it (ABI page §6.2)."""
    offered = regs.vls_decode(vcpu.get_one_reg(vls_id))
    wanted = sorted(wanted)
    if not wanted or regs.vls_cut(offered, max(wanted)) != wanted:
        have = ", ".join(str(128 * q) for q in offered) or "none"
        want = ", ".join(str(128 * q) for q in wanted) or "none"
        raise HostUnsupported(f"the saved {what} set ({want} bits) cannot be offered by this host",
                              f"the host offers {have} bits; a vCPU can only get a prefix of that list")
    if wanted != offered:
        vcpu.set_one_reg(vls_id, regs.vls_encode(wanted))


def configure_vcpu(vcpu, bit: Optional[int], sve_max_bits: Optional[int] = None,
                   sme_max_bits: Optional[int] = None, *, sve: bool = True,
                   extra_features=(), sve_label: str = "SVE vector length",
                   sme_label: str = "SME vector length", initialised: bool = False) -> VecShape:
    """Initialise ``vcpu`` with SVE and/or SME, cut the vector lengths, and
    finalise both with one KVM_ARM_VCPU_FINALIZE(KVM_ARM_VCPU_VEC).

    ``bit``: the SME feature bit (from :func:`discover`), None for no SME.
    ``sve_max_bits`` / ``sme_max_bits``: maximum vector lengths in bits
    (None keeps everything the host offers). ``sve=False`` makes an SME-only
    vCPU (legal, ABI page §4). Order: INIT -> SVE_VLS/SME_VLS -> FINALIZE(4).
    ``extra_features``: more feature bits for INIT (e.g. POWER_OFF);
    ``sve_label``/``sme_label`` name the lengths in errors (e.g. the option).
    ``initialised``: :func:`probe_on_vcpu` did the INIT (with these features and ``bit``).
    """
    if not sve and bit is None:
        raise UsageProblem("a vCPU without SVE needs SME", "drop --no-sve, or use a kernel with SME")
    if bit is None and sme_max_bits is not None:
        raise UsageProblem("an SME vector length was given but SME is not enabled",
                           "this kernel offers no SME (see pyvmm caps)")
    if not sve and sve_max_bits is not None:
        raise UsageProblem("an SVE vector length was given together with --no-sve")
    # Check the requested lengths' syntax before touching the vCPU.
    for bits, what in ((sve_max_bits, sve_label), (sme_max_bits, sme_label)):
        if bits is not None:
            parse_vl(bits, what)
    if not initialised:
        feats = [const("KVM_ARM_VCPU_PSCI_0_2"), *extra_features]
        if sve:
            feats.append(const("KVM_ARM_VCPU_SVE"))
        if bit is not None:
            feats.append(bit)
        vcpu.arm_vcpu_init(feats)
    sve_vqs = cut_vls(vcpu, regs.SVE_VLS, sve_max_bits, sve_label) if sve else ()
    sme_vqs = cut_vls(vcpu, regs.SME_VLS, sme_max_bits, sme_label) if bit is not None else ()
    vcpu.arm_vcpu_finalize(KVM_ARM_VCPU_VEC)  # one call for SVE and SME (§4)
    return VecShape.from_vls(sve_vqs, sme_vqs, bit)

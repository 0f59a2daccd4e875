"""Proof that the cffi layer matches the real kernel headers.

A C probe is compiled (not run) with Debian's aarch64 cross compiler against
Debian's arm64 UAPI headers (linux-libc-dev from trixie-backports, fetched by
ci/uapi-headers). Every struct size, field offset, constant and request
number the cffi layer declares or derives is emitted into the assembly and
compared here. Core-register offsets (struct kvm_regs has __int128, which
cffi cannot declare) and register-id constructors are checked the same way.
"""
import os
import platform
import re
import shutil
import subprocess

import pytest

from pyvmm.arm64 import regs, sysregs
from pyvmm._ffi import ffi
from pyvmm.ioctls import REQUESTS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CDEF = os.path.join(ROOT, "pyvmm", "_kvm_cdef.h")
# The cross compiler on x86_64; an arm64 host's own gcc compiles for arm64 already.
CC = "gcc" if platform.machine() in ("aarch64", "arm64") else "aarch64-linux-gnu-gcc"

# Every struct _kvm_cdef.h declares is checked.
with open(CDEF, encoding="utf-8") as _f:
    STRUCTS = sorted(set(re.findall(r"^struct (\w+) \{", _f.read(), re.M)))


def _need(tool_ok, what):
    if tool_ok:
        return
    if os.environ.get("CI") or os.environ.get("PYVMM_REQUIRE_PROBE") == "1":
        pytest.fail(f"{what} is missing in CI (ci/host-deps installs it)")
    pytest.skip(f"{what} is missing (run ci/host-deps, or make test)")


@pytest.fixture(scope="module")
def include_dir():
    env = os.environ.get("PYVMM_UAPI_INCLUDE")
    if env:
        return env
    script = os.path.join(ROOT, "ci", "uapi-headers")
    try:
        out = subprocess.run([script], check=True, capture_output=True, text=True, timeout=300)
    except (subprocess.CalledProcessError, OSError) as e:
        _need(False, f"Debian's linux-libc-dev headers ({getattr(e, 'stderr', e)})")
    return out.stdout.strip().splitlines()[-1]


def _fields(ctype, prefix=""):
    """(C member designator, cffi offset) for every field, recursing into
    structs and unions (anonymous members are addressed by their own name)."""
    out = []
    for name, field in ctype.fields or []:
        if name is None:
            continue
        out.append((prefix + name, field.offset))
        t = field.type
        if t.kind == "struct" or t.kind == "union":
            for sub, off in _fields(t, prefix + name + "."):
                out.append((sub, field.offset + off))
    return out


def _cdef_constants():
    consts = {}
    with open(CDEF) as f:
        for line in f:
            m = re.match(r"#define\s+(\w+)\s+(\S+)", line)
            if m:
                consts[m.group(1)] = int(m.group(2), 0)
    return consts


def _checks():
    """(label, C expression, expected value)."""
    checks = []
    for s in STRUCTS:
        t = ffi.typeof(f"struct {s}")
        checks.append((f"sizeof {s}", f"sizeof(struct {s})", ffi.sizeof(t)))
        for member, off in _fields(t):
            if s == "kvm_run" and member.startswith("s."):
                continue  # our 's' union declares only its padding
            checks.append((f"offsetof {s}.{member}", f"__builtin_offsetof(struct {s}, {member})", off))
    for name, value in _cdef_constants().items():
        checks.append((f"constant {name}", name, value))
    for name, req in REQUESTS.items():
        checks.append((f"request {name}", name, req.number))
    # Core registers: offsets into struct kvm_regs and the resulting ids.
    checks.append(("sizeof kvm_regs", "sizeof(struct kvm_regs)", regs.KVM_REGS_SIZE))
    core_members = {f"X{i}": f"regs.regs[{i}]" for i in range(31)}
    core_members.update({"SP": "regs.sp", "PC": "regs.pc", "PSTATE": "regs.pstate",
                         "SP_EL1": "sp_el1", "ELR_EL1": "elr_el1", "FPSR": "fp_regs.fpsr",
                         "FPCR": "fp_regs.fpcr"})
    core_members.update({n: f"spsr[{i}]" for i, n in enumerate(
        ("SPSR_EL1", "SPSR_ABT", "SPSR_UND", "SPSR_IRQ", "SPSR_FIQ"))})
    core_members.update({f"V{i}": f"fp_regs.vregs[{i}]" for i in range(32)})
    size_macro = {4: "KVM_REG_SIZE_U32", 8: "KVM_REG_SIZE_U64", 16: "KVM_REG_SIZE_U128"}
    for name, member in core_members.items():
        off, size = regs.CORE_OFFSETS[name]
        checks.append((f"core offset {name}", f"__builtin_offsetof(struct kvm_regs, {member})", off))
        checks.append((f"core id {name}",
                       f"KVM_REG_ARM64 | {size_macro[size]} | KVM_REG_ARM_CORE | KVM_REG_ARM_CORE_REG({member})",
                       regs.core(name)))
    # Merged register-id classes.
    for n in range(32):
        checks.append((f"id Z{n}", f"KVM_REG_ARM64_SVE_ZREG({n}, 0)", regs.sve_z(n)))
    for n in range(16):
        checks.append((f"id P{n}", f"KVM_REG_ARM64_SVE_PREG({n}, 0)", regs.sve_p(n)))
    checks.append(("id Z31 slice 31", "KVM_REG_ARM64_SVE_ZREG(31, 31)", regs.sve_z(31, 31)))
    checks.append(("id FFR", "KVM_REG_ARM64_SVE_FFR(0)", regs.sve_ffr()))
    checks.append(("id SVE_VLS", "KVM_REG_ARM64_SVE_VLS", regs.SVE_VLS))
    for n, name in regs.FW_REGS.items():
        checks.append((f"id {name}", f"KVM_REG_ARM_FW_REG({n})", regs.fw(n)))
    for n, name in regs.FW_FEAT_BMAP_REGS.items():
        checks.append((f"id {name}", f"KVM_REG_ARM_{name}", regs.fw_feat_bmap(n)))
    checks.append(("id TIMER_CTL", "KVM_REG_ARM_TIMER_CTL", regs.sysreg_named("CNTV_CTL_EL0")))
    checks.append(("id TIMER_CNT", "KVM_REG_ARM_TIMER_CNT", regs.sysreg_named("CNTVCT_EL0")))
    checks.append(("id TIMER_CVAL", "KVM_REG_ARM_TIMER_CVAL", regs.sysreg_named("CNTV_CVAL_EL0")))
    checks.append(("id CCSIDR[3]", "KVM_REG_ARM64 | KVM_REG_SIZE_U32 | KVM_REG_ARM_DEMUX | "
                   "KVM_REG_ARM_DEMUX_ID_CCSIDR | 3", regs.demux_ccsidr(3)))
    for name, enc in sysregs.BY_NAME.items():
        checks.append((f"id {name}", "ARM64_SYS_REG({}, {}, {}, {}, {})".format(*enc),
                       regs.sysreg(*enc)))
    return checks


def _compile(checks, include_dir):
    lines = ["#include <stddef.h>", "#include <linux/kvm.h>", "#include <asm/kvm.h>",
             "#include <linux/vhost.h>", "#include <linux/if_tun.h>",
             '#define EMIT(i, v) __asm__ volatile("\\n.ascii \\"@@" #i " %c0@@\\"" :: "i"((long long)(v)))',
             "void probe(void) {"]
    for i, (_, expr, _) in enumerate(checks):
        lines.append(f"  EMIT({i}, {expr});")
    lines.append("}")
    arch_inc = os.path.join(include_dir, "aarch64-linux-gnu")
    proc = subprocess.run([CC, "-S", "-O0", "-o", "-", "-I", arch_inc, "-I", include_dir, "-x", "c", "-"],
                          input="\n".join(lines), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    found = {}
    for m in re.finditer(r"@@(\d+) #?(-?\d+)@@", proc.stdout):
        found[int(m.group(1))] = int(m.group(2)) & 0xFFFFFFFFFFFFFFFF
    return found


def test_cffi_layer_matches_debian_arm64_uapi_headers(include_dir):
    _need(shutil.which(CC), f"the cross compiler {CC}")
    checks = _checks()
    found = _compile(checks, include_dir)
    mismatches = []
    for i, (label, expr, expected) in enumerate(checks):
        got = found.get(i)
        if got != expected & 0xFFFFFFFFFFFFFFFF:
            mismatches.append(f"{label}: header {got if got is None else hex(got)}, pyvmm {expected:#x}")
    assert not mismatches, "\n".join(mismatches)
    assert len(checks) > 700  # structs, constants, requests, core and sysreg ids


def test_headers_lack_sme_so_abi_page_values_are_checked_elsewhere(include_dir):
    """7.3 has no SME entries (test-machine.md); tests/host/test_regs.py checks
    the SME ids against the ABI page's worked ids instead."""
    with open(os.path.join(include_dir, "aarch64-linux-gnu", "asm", "kvm.h")) as f:
        text = f.read()
    assert "KVM_REG_ARM64_SME" not in text
    assert "KVM_ARM_VCPU_PMU_V3_STRICT\t9" in text or re.search(r"KVM_ARM_VCPU_PMU_V3_STRICT\s+9", text)

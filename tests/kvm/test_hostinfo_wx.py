"""Issue 14 #8: CNTFRQ_EL0 is read without writable+executable memory, so
pyvmm works where W^X is enforced. The process is put under the kernel's
own W^X rule (prctl PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN: what systemd's
MemoryDenyWriteExecute and SELinux deny_execmem refuse as well).

The reference value comes from the old way (host code in an RWX page),
run by this test in an unrestricted process; that the old way fails under
the restriction shows the restriction is in force."""
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.kvm

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_MDWE = textwrap.dedent("""
    import ctypes, sys
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        sys.exit(f"prctl(PR_SET_MDWE) failed: errno {ctypes.get_errno()}")
""")

# The old reader, kept here only as the reference: "mrs x0, cntfrq_el0; ret" in an RWX page.
_RWX_READ = textwrap.dedent("""
    import ctypes, mmap
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page[:8] = bytes.fromhex("00e03bd5c0035fd6")
    addr = ctypes.addressof(ctypes.c_char.from_buffer(page))
    print(ctypes.CFUNCTYPE(ctypes.c_uint64)(addr)())
""")

_PYVMM_READ = textwrap.dedent(f"""
    import sys
    sys.path.insert(0, {ROOT!r})
    from pyvmm import hostinfo
    print(hostinfo.cntfrq())
""")


def _py(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_cntfrq_is_read_under_w_xor_x():
    reference = _py(_RWX_READ)
    assert reference.returncode == 0, reference.stderr
    hz = int(reference.stdout)
    assert 1_000_000 <= hz <= 10_000_000_000

    old_way = _py(_MDWE + _RWX_READ)
    assert old_way.returncode != 0 and "PermissionError" in old_way.stderr, \
        "PR_SET_MDWE did not refuse an RWX mapping: the restriction is not in force"

    new_way = _py(_MDWE + _PYVMM_READ)
    assert new_way.returncode == 0, new_way.stderr
    assert int(new_way.stdout) == hz


def test_cntfrq_with_a_given_kvm_handle(kvm):
    from pyvmm import hostinfo

    assert hostinfo.cntfrq(kvm) == hostinfo.cntfrq() > 0

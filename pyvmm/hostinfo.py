"""Facts about the arm64 host that KVM does not report through ONE_REG."""
from __future__ import annotations

import functools
import mmap
import platform

from ._ffi import ffi

# "mrs x0, cntfrq_el0; ret": KVM does not trap guest reads of CNTFRQ_EL0, so
# guests see the host's value; Linux lets EL0 read it (CNTKCTL_EL1.EL0PCTEN
# or EL0VCTEN). 7.3 exposes no ONE_REG id for it.
_READ_CNTFRQ = bytes.fromhex("00e03bd5" "c0035fd6")


@functools.lru_cache(maxsize=None)
def cntfrq() -> int:
    """The generic timer frequency in Hz (CNTFRQ_EL0) on an arm64 host."""
    if platform.machine() not in ("aarch64", "arm64"):
        raise OSError("CNTFRQ_EL0 can only be read on an arm64 host")
    code = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    code[:len(_READ_CNTFRQ)] = _READ_CNTFRQ
    fn = ffi.cast("uint64_t (*)(void)", ffi.from_buffer(code))
    value = int(fn())
    # The mapping is kept for the life of the process (the result is cached).
    cntfrq._code = code  # type: ignore[attr-defined]
    return value

"""Facts about the arm64 host that KVM does not report through ONE_REG."""
from __future__ import annotations

import platform
import threading
from typing import Optional

from .errors import GuestError, HostUnsupported

# The probe a scratch vCPU runs (raw A64, little-endian words): KVM does not
# trap guest reads of CNTFRQ_EL0, so a guest sees the host's value (7.3
# exposes no ONE_REG id for it). The value goes out through the bare-metal
# mailbox's "done" register, an MMIO write KVM hands to pyvmm.
_PROBE = (0xD53BE000,  # mrs  x0, cntfrq_el0
          0xD2A14001,  # movz x1, #0x0a00, lsl #16   (x1 = MAILBOX_BASE 0x0a000000)
          0xF9000420,  # str  x0, [x1, #8]           (mailbox "done" := CNTFRQ_EL0)
          0x14000000)  # b    .
_lock = threading.Lock()
_value: Optional[int] = None


def cntfrq(kvm=None) -> int:
    """The generic timer frequency in Hz (CNTFRQ_EL0) on an arm64 host.

    Read by a scratch vCPU (``kvm``, or /dev/kvm opened for the purpose),
    not by host code: pyvmm never maps memory writable and executable, so it
    works where W^X is enforced (systemd MemoryDenyWriteExecute, SELinux
    deny_execmem, prctl PR_SET_MDWE). Cached: the frequency is fixed at boot.
    """
    global _value
    with _lock:
        if _value is None:
            _value = _probe(kvm)
        return _value


def _probe(kvm) -> int:
    if platform.machine() not in ("aarch64", "arm64"):
        raise HostUnsupported("CNTFRQ_EL0 can only be read on an arm64 host")
    from .baremetal import MAILBOX_BASE, BareMetal
    from .kvm import open_kvm

    assert MAILBOX_BASE == 0x0A000000  # encoded in _PROBE's movz
    own = kvm is None
    if own:
        kvm = open_kvm()
    try:
        with BareMetal(kvm, ram_size=64 << 10) as bm:
            bm.load(b"".join(w.to_bytes(4, "little") for w in _PROBE))
            bm.init_vcpu([])
            bm.enter_at()
            out = bm.run(max_exits=100)
    finally:
        if own:
            kvm.close()
    if out.stopped_by != "done" or not out.status:
        raise GuestError(f"the CNTFRQ_EL0 probe vCPU stopped without a value ({out.stopped_by or 'no exit'})")
    return out.status

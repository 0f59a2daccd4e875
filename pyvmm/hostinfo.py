"""Facts about the arm64 host that KVM does not report through ONE_REG."""
from __future__ import annotations

import os
from . import _threads
from typing import Optional

from .errors import GuestError, HostUnsupported

# The probe a scratch vCPU runs (raw A64, little-endian words): KVM does not
# trap guest reads of CNTFRQ_EL0, so a guest sees the host's value (7.3
# exposes no ONE_REG id for it). The value leaves through an MMIO write to
# an address outside the probe's RAM, which KVM hands to pyvmm.
_RAM = 0x80000000
_OUT = 0x0A000000
_PROBE = (0xD53BE000,  # mrs  x0, cntfrq_el0
          0xD2A14001,  # movz x1, #0x0a00, lsl #16   (x1 = _OUT)
          0xF9000020,  # str  x0, [x1]
          0x14000000)  # b    .
_PSTATE_EL1H_MASKED = 0x3C5
_lock = _threads.Lock()
_value: Optional[int] = None


def cntfrq(kvm=None) -> int:
    """The generic timer frequency in Hz (CNTFRQ_EL0) on an arm64 host.

    Read by a scratch vCPU (of ``kvm``, or of /dev/kvm opened for the
    purpose), not by host code: pyvmm never maps memory writable and
    executable, so this works where W^X is enforced (systemd
    MemoryDenyWriteExecute, SELinux deny_execmem, prctl PR_SET_MDWE).
    Cached: the frequency is fixed at boot.
    """
    global _value
    with _lock:
        if _value is None:
            _value = _probe(kvm)
        return _value


def _probe(kvm) -> int:
    if os.uname().machine not in ("aarch64", "arm64"):
        raise HostUnsupported("CNTFRQ_EL0 can only be read on an arm64 host")
    from . import exits
    from .arm64 import regs
    from ._ffi import const
    from .kvm import open_kvm
    from .memory import GuestMemory

    own = kvm is None
    if own:
        kvm = open_kvm()
    mem = GuestMemory()
    vm = None
    try:
        vm = kvm.create_vm()
        mem.add(_RAM, 64 << 10, vm)
        mem.write(_RAM, b"".join(w.to_bytes(4, "little") for w in _PROBE))
        vcpu = vm.create_vcpu(0)
        vcpu.arm_vcpu_init([const("KVM_ARM_VCPU_PSCI_0_2")])
        vcpu.set_reg(regs.core("PC"), _RAM)
        vcpu.set_reg(regs.core("PSTATE"), _PSTATE_EL1H_MASKED)
        for _ in range(10):
            ex = vcpu.run()
            if isinstance(ex, exits.MmioExit) and ex.is_write and ex.phys_addr == _OUT:
                return int.from_bytes(ex.data, "little")
            if not isinstance(ex, exits.InterruptedExit):
                break
        raise GuestError(f"the CNTFRQ_EL0 probe vCPU stopped without a value ({ex})")
    finally:
        if vm is not None:
            vm.close()
        mem.close()
        if own:
            kvm.close()

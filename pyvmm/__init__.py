"""pyvmm: a Python virtual machine monitor for arm64 KVM with first-class SVE
and SME guest state.

Library entry points: :func:`pyvmm.kvm.open_kvm` (system fd) →
:class:`pyvmm.vm.Vm` → :class:`pyvmm.vcpu.Vcpu`; register ids in
:mod:`pyvmm.arm64.regs`; SME discovery and vector lengths in :mod:`pyvmm.sme`.
"""
__version__ = "0.1.0"

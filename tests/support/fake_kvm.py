"""The test suite's one fake KVM: a model of a kernel implementing the KVM SME
ABI (v12, the ABI page docs/kvm-sme-abi.md), so the SME code runs on any host.

``FakeKvm`` answers like /dev/kvm would: the same methods as pyvmm.kvm.Kvm,
Vm and Vcpu, KvmErrors with the real errnos and the explainer's hints.
``bugs`` switches in known deviations (e.g. v4's SVCR without side effects)
to show that the conformance suite catches them. ``FakeKvm(vgic=device)``
hands ``device`` (e.g. :class:`support.fake_vgic.FakeVgicDevice`) to the
VM's create_device. Tests that use it ask for the ``fake_syscalls`` fixture
(tests/conftest.py), which routes the fd layer's prepared ioctls here.
It is a fake for pure logic: tests that claim KVM behaviour use real KVM.
"""
import errno as E

from pyvmm import _fd
from pyvmm.arm64 import errno_explain, regs
from pyvmm._ffi import ffi
from pyvmm.errors import KvmError, UsageProblem

PSCI, SVE = 2, 4
SME_BIT = 10
SME_CAP = 252
CAP_SVE = 170
FPSR_RESET_SM = 0x0800009F
RESET_UNKNOWN = 0x1DE7EC7EDBADC0DE  # what KVM's reset_unknown() writes (TPIDR_EL0, TPIDR2_EL0)


_FDS = {}  # fake fd -> FakeVcpu, for ioctls prepared by the fd layer (pyvmm._fd.KvmFd.prepare)


class FakeLibc:
    """Stands in for the C library's ioctl(2) on fake vCPU fds."""

    def ioctl(self, fd, req, arg):
        from pyvmm.ioctls import request

        names = {request(n).number: n for n in ("KVM_GET_ONE_REG", "KVM_SET_ONE_REG")}
        try:
            _FDS[fd].ioctl(names[int(req)], arg)
            return 0
        except KvmError as e:
            ffi.errno = e.errno
            return -1


FAKE_LIBC = FakeLibc()


def _err(err, ioctl, target, reg=None):
    return KvmError(err, ioctl, target, reg, errno_explain.explain(ioctl, err, reg))


class FakeKvm:
    path = "/dev/kvm"

    def __init__(self, sve_vqs=tuple(range(1, 17)), sme_vqs=(1, 2, 4, 8, 16), sme=True, fa64=True,
                 sme2=True, fpmr=True, bugs=(), vgic=None):
        self.sve_vqs = tuple(sve_vqs)
        self.sme_vqs = tuple(sme_vqs) if sme else ()
        self.sme = sme
        self.fa64, self.sme2, self.fpmr = fa64, sme2, fpmr
        self.bugs = set(bugs)
        self.ioctls = 0
        self.fd = 3
        self.vgic = vgic

    def check_extension(self, cap):
        if cap == CAP_SVE:
            return 1 if self.sve_vqs else 0
        if cap == SME_CAP:
            return 1 if self.sme else 0
        return 0

    def get_api_version(self):
        return 12

    def create_vm(self, ipa_bits=None):
        return FakeVm(self)

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


class FakeVm:
    def __init__(self, kvm):
        self.kvm = kvm
        self.vcpus = []

    def create_vcpu(self, index):
        v = FakeVcpu(self, index)
        self.vcpus.append(v)
        return v

    def create_device(self, dev_type):
        from pyvmm._ffi import const

        assert dev_type == const("KVM_DEV_TYPE_ARM_VGIC_V3") and self.kvm.vgic is not None
        return self.kvm.vgic

    def close(self):
        self.vcpus = []


class FakeVcpu:
    run_struct = None  # no kvm_run: nothing here runs a guest

    def __init__(self, vm, index):
        self.vm, self.kvm = vm, vm.kvm
        self.index = index
        self.target = f"vcpu{index}"
        self.fd = 1000 + len(_FDS)
        _FDS[self.fd] = self
        self.inited = False
        self.finalized = False
        self.has_sve = self.has_sme = False
        self.immediate_exit = False
        self.ran = False
        self._reset_state()

    def one_reg_batch(self, ids, framed=False):
        from pyvmm.vcpu import OneRegBatch

        return OneRegBatch(self, ids, framed)

    # The real fd layer's prepared path, over the fake libc (fake_syscalls).
    prepare = _fd.KvmFd.prepare
    prepare_raw = _fd.KvmFd.prepare_raw

    # -- KVM_RUN, for run-loop tests --
    def play(self, script):
        """Make KVM_RUN play ``script``: each entry fills kvm_run (a callable
        given the ``struct kvm_run *``) or is an exception KVM_RUN raises."""
        self.run_struct = ffi.new("struct kvm_run *")
        self._script = list(script)

    def prepare_run(self):
        def issue():
            step = self._script.pop(0)
            if isinstance(step, BaseException):
                raise step
            step(self.run_struct)
            return 0
        return issue

    def error(self, name, err, reg=None):
        return _err(err, name, self.target, reg)

    # -- state --
    def _reset_state(self):
        self.svcr = 0
        self.z = [bytes(256)] * 32
        self.p = [bytes(32)] * 16
        self.ffr = bytes(32)
        self.v = [bytes(16)] * 32
        self.za = [bytes(256)] * 256
        self.zt0 = bytes(64)
        self.fpsr = self.fpcr = 0
        # TPIDR_EL0 and TPIDR2_EL0 reset to KVM's UNKNOWN pattern (v12 16/29, ABI page §3)
        unknown = 0 if "tpidr2_reset_zero" in self.kvm.bugs else RESET_UNKNOWN
        self.sys = {regs.SMCR_EL1: 0, regs.TPIDR2_EL0: unknown, regs.TPIDR_EL0: RESET_UNKNOWN,
                    regs.FPMR: 0, regs.ZCR_EL1: 0}

    def _idregs(self):
        k = self.kvm
        if not hasattr(self.vm, "idregs"):
            self.vm.idregs = {
                regs.ID_AA64PFR1_EL1: ((2 if k.sme2 else 1) << 24) if k.sme else 0,
                regs.ID_AA64SMFR0_EL1: ((1 << 63) if k.fa64 else 0) | 0xF << 32,
                regs.SMIDR_EL1: 0x41000000,
            }
        return self.vm.idregs

    @property
    def sve_vq(self):
        return max(self.sve_vqs_now)

    @property
    def sme_vq(self):
        return max(self.sme_vqs_now)

    def _fa64(self):
        return bool(self._idregs()[regs.ID_AA64SMFR0_EL1] >> 63)

    def _sme2(self):
        return (self._idregs()[regs.ID_AA64PFR1_EL1] >> 24) & 0xF >= 2

    # -- ioctls --
    def arm_vcpu_init(self, features):
        self.kvm.ioctls += 1
        feats = set(features)
        known = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9} | ({SME_BIT} if self.kvm.sme else set())
        if feats - known:
            raise _err(E.ENOENT, "KVM_ARM_VCPU_INIT", self.target)
        if 9 in feats:  # PMU_V3_STRICT needs PMU: a bit meaning something else
            raise _err(E.EINVAL, "KVM_ARM_VCPU_INIT", self.target)
        if SVE in feats and not self.kvm.sve_vqs:
            raise _err(E.EINVAL, "KVM_ARM_VCPU_INIT", self.target)
        sve, sme = SVE in feats, SME_BIT in feats
        if self.inited and (sve, sme) != (self.has_sve, self.has_sme):
            raise _err(E.EINVAL, "KVM_ARM_VCPU_INIT", self.target)
        if not self.inited:
            self.sve_vqs_now = self.kvm.sve_vqs if sve else ()
            self.sme_vqs_now = self.kvm.sme_vqs if sme else ()
        self.has_sve, self.has_sme = sve, sme
        self.inited = True
        self._reset_state()  # §4: INIT again zeroes SVE/SME state, SVCR = 0

    def arm_vcpu_finalize(self, what=4):
        self.kvm.ioctls += 1
        if what != 4 or not (self.has_sve or self.has_sme):
            raise _err(E.EINVAL, "KVM_ARM_VCPU_FINALIZE", self.target)
        if self.finalized:
            raise _err(E.EPERM, "KVM_ARM_VCPU_FINALIZE", self.target)
        self.finalized = True

    def set_immediate_exit(self, on):
        self.immediate_exit = on

    def run(self):
        self.kvm.ioctls += 1
        if (self.has_sve or self.has_sme) and not self.finalized:
            raise _err(E.EPERM, "KVM_RUN", self.target)
        self.ran = True
        from pyvmm import exits
        return exits.InterruptedExit()

    def _vec_ok(self):
        return (self.has_sve or self.has_sme) and not self.finalized

    def get_reg_list(self):
        self.kvm.ioctls += 1
        if self._vec_ok():
            raise _err(E.EPERM, "KVM_GET_REG_LIST", self.target)
        out = [regs.core(n) for n in ("X0", "PC", "PSTATE")]
        if self._v_ok():
            out += [regs.core(f"V{n}") for n in range(32)]
        out += [regs.core("FPSR"), regs.core("FPCR")]
        if self.has_sve:
            out.append(regs.SVE_VLS)
        vl = self._zvl()
        if vl:
            out += [regs.sve_z(n) for n in range(32)] + [regs.sve_p(n) for n in range(16)]
            if self._ffr_ok():
                out.append(regs.sve_ffr())
        if self.has_sme:
            out.append(regs.SME_VLS)
            if self.svcr & 2:
                out += [regs.sme_za_row(n) for n in range(16 * self.sme_vq)]
                if self._sme2():
                    out.append(regs.sme_zt(0))
        sysl = list(self._idregs().keys())[:2]
        if self.has_sme:
            sysl += [regs.SVCR, regs.SMCR_EL1, regs.TPIDR2_EL0, regs.SMIDR_EL1]
        if self.kvm.fpmr:
            sysl.append(regs.FPMR)
        if self.has_sve:
            sysl.append(regs.ZCR_EL1)
        if "svcr_first_in_list" in self.kvm.bugs:
            return sysl + out
        return out + sorted(sysl)

    # -- §5 access rules --
    def _v_ok(self):
        if self.has_sve:
            return False
        if self.has_sme:
            return not self.svcr & 1
        return True

    def _zvl(self):
        """Bytes of Z data in the current mode, 0 when Z/P do not exist."""
        if self.has_sme and self.svcr & 1:
            return 16 * self.sme_vq
        if self.has_sve:
            return 16 * self.sve_vq
        return 0

    def _ffr_ok(self):
        if self.has_sme and self.svcr & 1:
            return self._fa64() or "ffr_without_fa64" in self.kvm.bugs
        return self.has_sve

    def _access(self, ioctl, reg_id):
        """Raise the ABI's errno for ``reg_id`` in the current state."""
        d = regs.decode(reg_id)
        name = regs.name(reg_id)
        t = self.target

        def fail(err):
            raise _err(err, ioctl, t, name)
        if d.kind == "sve_vls":
            if not self.has_sve:
                fail(E.ENOENT)
            return
        if d.kind == "sme_vls":
            if not self.has_sme:
                fail(E.ENOENT)
            return
        if d.kind in ("sve_z", "sve_p", "sve_ffr"):
            if not (self.has_sve or self.has_sme):
                fail(E.ENOENT)
            if not self.finalized:
                fail(E.EPERM)
            if d.slice:
                fail(E.ENOENT)
            if not self._zvl():
                fail(E.ENOENT)
            if d.kind == "sve_ffr" and not self._ffr_ok():
                fail(E.ENOENT)
            return
        if regs.coproc_of(reg_id) == regs.COPROC_SME:
            # The order of v12's checks (21/29, ABI page §4): only ZA rows and ZT0 are SME
            # registers; a row beyond the SVL comes before the slice, both before SVCR.ZA.
            if d.kind not in ("sme_za", "sme_zt") or (d.kind == "sme_zt" and d.index != 0):
                fail(E.EINVAL)
            if not self.has_sme:
                fail(E.ENOENT)
            row_first = "za_slice_before_row" not in self.kvm.bugs
            if row_first and d.kind == "sme_za" and d.index >= 16 * self.sme_vq:
                fail(E.EINVAL)
            if d.slice:
                fail(E.ENOENT)
            if d.kind == "sme_zt" and not self._sme2():
                fail(E.ENOENT)
            if d.kind == "sme_za" and d.index >= 16 * self.sme_vq:
                fail(E.EINVAL)
            # ZA off comes before finalisation (v12, ABI page §4): a new vCPU answers EBUSY
            if not self.svcr & 2:
                fail(E.EBUSY)
            if not self.finalized:
                fail(E.EPERM)
            return
        if d.kind == "core" and name.startswith("V"):
            if not self._v_ok():
                fail(E.EINVAL)
            return
        if d.kind == "core":
            return
        if d.kind == "sysreg":
            sme_only = (regs.SVCR, regs.SMCR_EL1, regs.TPIDR2_EL0, regs.SMIDR_EL1)
            if reg_id in sme_only and not self.has_sme:
                fail(E.ENOENT)
            if reg_id == regs.SMPRI_EL1:  # no userspace state (v12, ABI page §3)
                fail(E.ENOENT)
            if reg_id == regs.FPMR and not self.kvm.fpmr:
                fail(E.ENOENT)
            if reg_id == regs.ZCR_EL1 and not self.has_sve:
                fail(E.ENOENT)
            return
        fail(E.ENOENT)

    def _check_len(self, reg_id, value):
        if len(value) != regs.size_of(reg_id):
            raise UsageProblem(f"register {regs.name(reg_id)} takes {regs.size_of(reg_id)} bytes")

    def get_one_reg(self, reg_id):
        self.kvm.ioctls += 1
        self._access("KVM_GET_ONE_REG", reg_id)
        d = regs.decode(reg_id)
        size = regs.size_of(reg_id)
        if d.kind in ("sve_vls", "sme_vls"):
            return regs.vls_encode(self.sve_vqs_now if d.kind == "sve_vls" else self.sme_vqs_now)
        zvl = self._zvl()
        if d.kind == "sve_z":
            return self.z[d.index][:zvl].ljust(size, b"\0")
        if d.kind == "sve_p":
            return self.p[d.index][:zvl // 8].ljust(size, b"\0")
        if d.kind == "sve_ffr":
            return self.ffr[:zvl // 8].ljust(size, b"\0")
        if d.kind == "sme_za":
            return self.za[d.index][:16 * self.sme_vq].ljust(size, b"\0")
        if d.kind == "sme_zt":
            return self.zt0
        if d.kind == "core":
            n = d.name
            if n.startswith("V"):
                return self.v[int(n[1:])]
            if n == "FPSR":
                return self.fpsr.to_bytes(4, "little")
            if n == "FPCR":
                return self.fpcr.to_bytes(4, "little")
            return bytes(size)
        if reg_id == regs.SVCR:
            return self.svcr.to_bytes(8, "little")
        if reg_id in self._idregs():
            v = self._idregs()[reg_id]
            if reg_id == regs.ID_AA64PFR1_EL1 and not self.has_sme:
                v &= ~(0xF << 24)
            return v.to_bytes(8, "little")
        return self.sys.get(reg_id, 0).to_bytes(8, "little")

    def set_one_reg(self, reg_id, value):
        self._check_len(reg_id, value)
        self.kvm.ioctls += 1
        ioctl = "KVM_SET_ONE_REG"
        name = regs.name(reg_id)
        self._access(ioctl, reg_id)
        d = regs.decode(reg_id)
        value = bytes(value)
        zvl = self._zvl()
        if d.kind in ("sve_vls", "sme_vls"):
            if self.finalized:
                raise _err(E.EPERM, ioctl, self.target, name)
            host = self.kvm.sve_vqs if d.kind == "sve_vls" else self.kvm.sme_vqs
            want = regs.vls_decode(value)
            if not want or regs.vls_cut(host, max(want)) != want:
                raise _err(E.EINVAL, ioctl, self.target, name)
            if d.kind == "sve_vls":
                self.sve_vqs_now = tuple(want)
            else:
                self.sme_vqs_now = tuple(want)
        elif d.kind == "sve_z":
            self.z[d.index] = value[:zvl].ljust(256, b"\0")
        elif d.kind == "sve_p":
            self.p[d.index] = value[:zvl // 8].ljust(32, b"\0")
        elif d.kind == "sve_ffr":
            self.ffr = value[:zvl // 8].ljust(32, b"\0")
        elif d.kind == "sme_za":
            self.za[d.index] = value[:16 * self.sme_vq].ljust(256, b"\0")
        elif d.kind == "sme_zt":
            self.zt0 = value
        elif d.kind == "core":
            n = d.name
            if n.startswith("V"):
                self.v[int(n[1:])] = value
            elif n == "FPSR":
                self.fpsr = int.from_bytes(value, "little")
            elif n == "FPCR":
                self.fpcr = int.from_bytes(value, "little")
        elif reg_id == regs.SVCR:
            self._set_svcr(int.from_bytes(value, "little"))
        elif reg_id in self._idregs():
            v = int.from_bytes(value, "little")
            if v != self._idregs()[reg_id]:
                if self.ran:
                    raise _err(E.EBUSY, ioctl, self.target, name)
                self._idregs()[reg_id] = v
        else:
            self.sys[reg_id] = int.from_bytes(value, "little")

    def _set_svcr(self, v):
        if v & ~3:
            raise _err(E.EINVAL, "KVM_SET_ONE_REG", self.target, "SVCR")
        if "no_svcr_side_effects" not in self.kvm.bugs:
            if (v ^ self.svcr) & 1:  # SM changes: §5
                self.z = [bytes(256)] * 32
                self.p = [bytes(32)] * 16
                self.ffr = bytes(32)
                self.v = [bytes(16)] * 32
                self.fpsr = FPSR_RESET_SM
                self.sys[regs.FPMR] = 0
            if v & 2 and not self.svcr & 2:  # ZA 0 -> 1
                self.za = [bytes(256)] * 256
                self.zt0 = bytes(64)
        self.svcr = v

    def get_reg(self, reg_id):
        return int.from_bytes(self.get_one_reg(reg_id), "little")

    def set_reg(self, reg_id, value):
        self.set_one_reg(reg_id, value.to_bytes(regs.size_of(reg_id), "little"))

    def ioctl(self, name, arg=0, reg=None):
        """The batch path of pyvmm.vecstate: a struct kvm_one_reg pointer."""
        reg_id = int(arg.id)
        buf = ffi.cast("uint8_t *", arg.addr)
        size = regs.size_of(reg_id)
        if name == "KVM_GET_ONE_REG":
            ffi.memmove(buf, self.get_one_reg(reg_id), size)
        elif name == "KVM_SET_ONE_REG":
            self.set_one_reg(reg_id, bytes(ffi.buffer(buf, size)))
        else:
            raise AssertionError(name)
        return 0

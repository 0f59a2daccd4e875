"""The test suite's one fake vGIC: a recording stand-in for the KVM vGICv3
device fd (pure logic only; tests/kvm/test_gic_state.py runs the same code
against the real in-kernel vGIC). Hand it to a VM with
``support.fake_kvm.FakeKvm(vgic=FakeVgicDevice())``."""
import errno

from pyvmm._ffi import const
from pyvmm.errors import KvmError
from pyvmm.machine import gic_regs

SYSREGS = const("KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS")
NR_IRQS_GRP = const("KVM_DEV_ARM_VGIC_GRP_NR_IRQS")
DIST = const("KVM_DEV_ARM_VGIC_GRP_DIST_REGS")
PRI5 = 4 << 8  # ICC_CTLR_EL1.PRIbits = 5 priority bits - 1


class FakeVgicDevice:
    """Records every get/set; a set stores the value, a get returns the last
    value stored under (group, attr) or a distinct seed derived from it."""

    def __init__(self, icc_ctlr=PRI5, a3v=False):
        self.nr_irqs = None  # set by VgicV3.__init__ (GRP_NR_IRQS)
        self.icc_ctlr = icc_ctlr
        self.a3v = a3v  # GICD_TYPER.A3V; KVM's vGIC has it clear: IROUTER upper halves RAZ/WI
        self.busy = False
        self.values = {}
        self.log = []  # ("get"|"set", group, attr, value)

    def _upper_route(self, group, attr):
        return (group == DIST and not self.a3v and gic_regs.GICD_IROUTER <= attr < gic_regs.GICD_IROUTER + 0x2000
                and attr % 8 == 4)

    def _seed(self, group, attr):
        if group == SYSREGS and attr & 0xFFFF == gic_regs.sysreg_instr("ICC_CTLR_EL1"):
            return self.icc_ctlr
        if group == DIST and attr == gic_regs.GICD_TYPER:
            return (gic_regs.GICD_TYPER_A3V if self.a3v else 0) | 0x3  # (A3V, ITLinesNumber for 128 INTIDs)
        if self._upper_route(group, attr):
            return 0
        return (group * 0x9E3779B1 + attr * 0x85EBCA77) & 0xFFFFFFFF

    def set_device_attr(self, group, attr, value=None, ctype="uint64_t"):
        if self.busy and group != NR_IRQS_GRP:
            raise KvmError(errno.EBUSY, "KVM_SET_DEVICE_ATTR", "vgic-v3")
        if group == NR_IRQS_GRP:
            self.nr_irqs = value
        self.log.append(("set", group, attr, value))
        if not self._upper_route(group, attr):  # write-ignored there
            self.values[(group, attr)] = value

    def get_device_attr(self, group, attr, ctype="uint64_t"):
        if group == NR_IRQS_GRP:
            return self.nr_irqs
        if self.busy:
            raise KvmError(errno.EBUSY, "KVM_GET_DEVICE_ATTR", "vgic-v3")
        value = self.values.get((group, attr), self._seed(group, attr))
        self.log.append(("get", group, attr, value))
        return value

    def prepare(self, name):
        """The fd layer's prepared request (pyvmm._fd.KvmFd.prepare) on this
        fake: ``issue(attr)`` with a ``struct kvm_device_attr *`` whose addr
        points at a 32-bit value (the vGIC's register accessors)."""
        from pyvmm._ffi import ffi

        def issue(a, reg=None):
            value = ffi.cast("uint32_t *", a.addr)
            if name == "KVM_GET_DEVICE_ATTR":
                value[0] = self.get_device_attr(int(a.group), int(a.attr), "uint32_t")
            else:
                self.set_device_attr(int(a.group), int(a.attr), int(value[0]), "uint32_t")
            return 0
        return issue

    def prepare_raw(self, name):
        """The fd layer's raw prepared request (pyvmm._fd.KvmFd.prepare_raw)
        on this fake: ``call(fd, number, attr)``, 0 or -1 with ``ffi.errno``
        set; the value is 32 or 64 bits as the vGIC's accessors pass it
        (CPU_SYSREGS: 64)."""
        from pyvmm._ffi import ffi

        def call(_fd, _number, a):
            ctype = "uint64_t" if int(a.group) == SYSREGS else "uint32_t"
            value = ffi.cast(ctype + " *", a.addr)
            try:
                if name == "KVM_GET_DEVICE_ATTR":
                    value[0] = self.get_device_attr(int(a.group), int(a.attr), ctype)
                else:
                    self.set_device_attr(int(a.group), int(a.attr), int(value[0]), ctype)
            except KvmError as e:
                ffi.errno = e.errno
                return -1
            return 0
        return call, -1, name

    def error(self, name, err, reg=None):
        return KvmError(err, name, "vgic-v3", reg)

    def writes(self):
        return [(g, a, v) for op, g, a, v in self.log if op == "set" and g != NR_IRQS_GRP
                and g != const("KVM_DEV_ARM_VGIC_GRP_ADDR")]

    def close(self):
        pass

"""Machine.pause/resume's clock hold, with the fake kernel's vCPUs (pure
logic: no VM, no threads): the counters read at the pause are written back on resume."""
from pyvmm.arm64 import regs
from pyvmm.machine import Machine, MachineConfig
from support.fake_kvm import FakeKvm

CNTVCT, CNTPCT = regs.sysreg_named("CNTVCT_EL0"), regs.sysreg_named("CNTPCT_EL0")


def _machine(hide=True):
    """A machine with two vCPUs of the fake kernel whose counters read 1000
    (CNTVCT) and 1005 (CNTPCT); no VM, no threads."""
    m = Machine(None, MachineConfig(), None, lambda data: None)
    vm = FakeKvm().create_vm()
    m.vcpus = [vm.create_vcpu(0), vm.create_vcpu(1)]
    for v in m.vcpus:
        v.set_reg(CNTVCT, 1000)
        v.set_reg(CNTPCT, 1005)
    m.hide_pauses = hide
    return m


def _time_passes(m, ticks):
    for v in m.vcpus:
        v.set_reg(CNTVCT, v.get_reg(CNTVCT) + ticks)
        v.set_reg(CNTPCT, v.get_reg(CNTPCT) + ticks)


def _counters(m):
    return [(v.get_reg(CNTVCT), v.get_reg(CNTPCT)) for v in m.vcpus]


def test_resume_puts_the_counters_back_where_the_pause_found_them():
    m = _machine()
    m.request_pause()
    m.freeze_clock()
    _time_passes(m, 10_000)
    m.resume()
    assert not m.paused
    assert _counters(m) == [(1000, 1005), (1000, 1005)]
    _time_passes(m, 500)
    m.request_pause()  # a second pause reads the counters again
    m.freeze_clock()
    _time_passes(m, 7)
    m.resume()
    assert _counters(m) == [(1500, 1505), (1500, 1505)]


def test_keep_lets_the_counters_run_through_a_pause():
    m = _machine(hide=False)
    m.request_pause()
    m.freeze_clock()
    _time_passes(m, 10_000)
    m.resume()
    assert _counters(m) == [(11_000, 11_005), (11_000, 11_005)]


def test_a_pause_lifted_before_the_vcpu_reached_its_pause_point_lets_it_run_again():
    """The migration destination's bug: resume() came before the vCPU thread
    saw its EINTR, so the thread skipped parking with immediate_exit still set,
    and every later KVM_RUN returned EINTR at once: the guest never ran again.
    The loop below runs the real Machine's pause point with a fake vCPU whose
    second KVM_RUN records the flag it was entered with."""
    import errno

    from pyvmm._ffi import const
    from pyvmm.errors import KvmError
    from pyvmm.machine import ExitStatus
    from pyvmm.machine.vcpu_loop import run_vcpu

    m = Machine(None, MachineConfig(), None, lambda data: None)
    vcpu = FakeKvm().create_vm().create_vcpu(0)
    entered_with = []

    def power_off(run):
        entered_with.append(vcpu.immediate_exit)
        run.exit_reason = const("KVM_EXIT_SYSTEM_EVENT")
        run.system_event.type = const("KVM_SYSTEM_EVENT_SHUTDOWN")
        run.system_event.ndata = 0

    vcpu.play([KvmError(errno.EINTR, "KVM_RUN", "vcpu0"), power_off])
    m.vcpus = [vcpu]
    m.request_pause()
    assert vcpu.immediate_exit  # the kick
    m.resume()                  # lifted before the thread got to its pause point
    run_vcpu(m, vcpu)
    assert entered_with == [False]
    assert m.done.is_set() and m._outcome is not None and m._outcome.status == ExitStatus.POWEROFF

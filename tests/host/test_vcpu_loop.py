"""The exit policy and the vCPU loop (pyvmm.machine.vcpu_loop) on synthetic
exits: kvm_run structures built with cffi, and tests/support's recording bus,
fake machine and fake vCPU whose KVM_RUN plays a script (fakes for pure
logic; real KVM runs the same loop in tests/kvm)."""
import errno
import time
from collections import Counter

import pytest

from pyvmm._ffi import const, ffi
from pyvmm.errors import GuestError, KvmError, UsageProblem
from pyvmm.machine import ConsoleInput, ExitStatus
from pyvmm.machine.vcpu_loop import PAUSE_POINT, handle_exit, run_failure, run_vcpu
from support.fake_kvm import FakeKvm
from support.fake_machine import FakeMachine, RecordingBus


def mmio(run, addr, n, write=None):
    run.exit_reason = const("KVM_EXIT_MMIO")
    run.mmio.phys_addr, run.mmio.len = addr, n
    run.mmio.is_write = 1 if write is not None else 0
    if write is not None:
        ffi.memmove(run.mmio.data, write, len(write))


def system_event(run, kind):
    run.exit_reason = const("KVM_EXIT_SYSTEM_EVENT")
    run.system_event.type = const(kind)
    run.system_event.ndata = 0


def test_mmio_write_goes_to_the_bus():
    run, bus, counts = ffi.new("struct kvm_run *"), RecordingBus(), Counter()
    mmio(run, 0x0900_0000, 4, b"\x41\0\0\0")
    assert handle_exit(run, bus, 0, counts) is None
    assert bus.log == [("write", 0x0900_0000, b"\x41\0\0\0")]
    assert counts == {"mmio": 1}


def test_mmio_read_is_answered_in_kvm_run():
    run, bus = ffi.new("struct kvm_run *"), RecordingBus()
    mmio(run, 0x0A00_0008, 2)
    assert handle_exit(run, bus, 0, Counter()) is None
    assert bus.log == [("read", 0x0A00_0008, 2)]
    assert bytes(ffi.buffer(run.mmio.data, 8)) == b"\x11\x22" + bytes(6)


def test_an_oversized_mmio_length_never_overruns_kvm_run():
    run, bus = ffi.new("struct kvm_run *"), RecordingBus()
    mmio(run, 0x0A00_0000, 8)
    run.mmio.len = 0xFFFF_FFFF
    handle_exit(run, bus, 0, Counter())
    assert bus.log == [("read", 0x0A00_0000, 8)]


def test_a_signal_is_a_pause_point():
    run, counts = ffi.new("struct kvm_run *"), Counter()
    run.exit_reason = const("KVM_EXIT_INTR")
    assert handle_exit(run, RecordingBus(), 0, counts) is PAUSE_POINT
    assert counts == {"intr": 1}


@pytest.mark.parametrize("kind,status", [("KVM_SYSTEM_EVENT_SHUTDOWN", ExitStatus.POWEROFF),
                                         ("KVM_SYSTEM_EVENT_RESET", ExitStatus.RESET),
                                         ("KVM_SYSTEM_EVENT_CRASH", ExitStatus.CRASH)])
def test_psci_system_events_end_the_machine(kind, status):
    run, counts = ffi.new("struct kvm_run *"), Counter()
    system_event(run, kind)
    verdict = handle_exit(run, RecordingBus(), 0, counts)
    assert verdict[0] == status
    assert counts == {"system_event": 1}


@pytest.mark.parametrize("kind", ["KVM_SYSTEM_EVENT_WAKEUP", "KVM_SYSTEM_EVENT_SUSPEND"])
def test_wakeup_and_suspend_let_the_vcpu_run_on(kind):
    run = ffi.new("struct kvm_run *")
    system_event(run, kind)
    assert handle_exit(run, RecordingBus(), 0, Counter()) is None


def test_exits_pyvmm_cannot_continue_from_are_crashes_naming_the_vcpu():
    run = ffi.new("struct kvm_run *")
    run.exit_reason = const("KVM_EXIT_FAIL_ENTRY")
    run.fail_entry.hardware_entry_failure_reason = 0x42
    status, reason = handle_exit(run, RecordingBus(), 3, Counter())
    assert status == ExitStatus.CRASH and reason.startswith("vcpu3: ") and "FAIL_ENTRY" in reason
    run.exit_reason = const("KVM_EXIT_ARM_NISV")
    run.arm_nisv.fault_ipa = 0x1234_5000
    status, reason = handle_exit(run, RecordingBus(), 0, Counter())
    assert status == ExitStatus.CRASH and "0x12345000" in reason
    run.exit_reason = 0xABC
    counts = Counter()
    status, reason = handle_exit(run, RecordingBus(), 0, counts)
    assert status == ExitStatus.CRASH and "unexpected exit" in reason
    assert counts == {"OtherExit": 1}


@pytest.mark.parametrize("err", [errno.ENOSYS, errno.EFAULT, errno.ENOEXEC])
def test_kvm_run_errnos_of_a_stuck_guest_are_crashes(err):
    status, reason = run_failure(KvmError(err, "KVM_RUN", "vcpu1"), 1)
    assert status == ExitStatus.CRASH and "cannot continue" in reason and reason.startswith("vcpu1: ")


def test_other_failures_map_to_error_or_usage():
    assert run_failure(KvmError(errno.EINVAL, "KVM_RUN", "vcpu0"), 0)[0] == ExitStatus.ERROR
    assert run_failure(KvmError(errno.EFAULT, "KVM_SET_ONE_REG", "vcpu0"), 0)[0] == ExitStatus.ERROR
    assert run_failure(UsageProblem("bad"), 0) == (ExitStatus.USAGE, "vcpu0: bad")
    assert run_failure(GuestError("odd guest"), 0) == (ExitStatus.ERROR, "vcpu0: odd guest")
    status, reason = run_failure(ValueError("oops"), 2)
    assert status == ExitStatus.ERROR and reason == "vcpu2: internal error: ValueError: oops"


def scripted_vcpu(script):
    v = FakeKvm().create_vm().create_vcpu(0)
    v.play(script)
    return v


def test_the_loop_runs_until_the_guest_powers_off():
    bus = RecordingBus()
    vcpu = scripted_vcpu([lambda r: mmio(r, 0x0900_0000, 1, b"A"),
                          KvmError(errno.EINTR, "KVM_RUN", "vcpu0"),
                          lambda r: system_event(r, "KVM_SYSTEM_EVENT_SHUTDOWN")])
    m = FakeMachine(bus)
    m.paused = True  # the signal finds a pause requested: the vCPU parks once
    before = time.monotonic_ns()
    run_vcpu(m, vcpu)
    assert before <= m.first_run_ns <= time.monotonic_ns()  # start-up benchmark's mark (bench/startup.py)
    assert m.entered.is_set()  # Machine.run starts the I/O and console threads after this
    assert m.outcomes == [(ExitStatus.POWEROFF, "the guest powered off")]
    assert m.parked == 1
    assert bus.log == [("write", 0x0900_0000, b"A")]
    assert m.exits == {"mmio": 1, "intr": 1, "system_event": 1}


def test_the_loop_turns_a_stuck_guest_into_a_crash():
    vcpu = scripted_vcpu([KvmError(errno.ENOSYS, "KVM_RUN", "vcpu0")])
    m = FakeMachine(RecordingBus())
    run_vcpu(m, vcpu)
    assert [s for s, _ in m.outcomes] == [ExitStatus.CRASH]


def test_a_vcpu_that_cannot_prepare_its_run_ends_the_machine_with_the_reason():
    # an exception before the first KVM_RUN (here: mapping the run struct) used to escape the
    # vCPU thread, leaving the machine waiting for a verdict that never came
    vcpu = scripted_vcpu([])

    def refuse():
        raise KvmError(errno.ENOMEM, "KVM_RUN", "vcpu0")
    vcpu.prepare_run = refuse
    m = FakeMachine(RecordingBus())
    run_vcpu(m, vcpu)
    assert m.outcomes == [(ExitStatus.ERROR, "vcpu0: " + str(KvmError(errno.ENOMEM, "KVM_RUN", "vcpu0")))]
    assert m.first_run_ns is None and not m.entered.is_set()
    assert m.exits == {}


def test_console_escape_ctrl_a_x_stops_and_ctrl_a_ctrl_a_sends_one_ctrl_a():
    c = ConsoleInput(None, escape=True)
    stops = []
    c.on_escape = lambda: stops.append(1)
    assert c._filter(b"ab\x01xcd") == b"abcd" and stops == [1]
    assert c._filter(b"\x01\x01") == b"\x01"
    assert c._filter(b"\x01q") == b"\x01q"
    assert c._filter(b"z\x01") == b"z" and c._filter(b"X") == b"" and stops == [1, 1]  # split across reads


def test_a_fast_read_answers_without_the_bus_and_only_for_4_bytes():
    run, bus = ffi.new("struct kvm_run *"), RecordingBus()
    bus.fast_reads[0x0A00_0060] = lambda: b"\x01\0\0\0"
    mmio(run, 0x0A00_0060, 4)
    assert handle_exit(run, bus, 0, Counter()) is None
    assert bus.log == [] and bytes(ffi.buffer(run.mmio.data, 4)) == b"\x01\0\0\0"
    mmio(run, 0x0A00_0060, 2)  # another width: the general path
    handle_exit(run, bus, 0, Counter())
    assert bus.log == [("read", 0x0A00_0060, 2)]


def test_a_fast_read_is_not_taken_while_tracing():
    run, bus = ffi.new("struct kvm_run *"), RecordingBus()
    bus.fast_reads[0x0A00_0060] = lambda: b"\x01\0\0\0"
    bus.trace = Counter()
    mmio(run, 0x0A00_0060, 4)
    handle_exit(run, bus, 0, Counter())
    assert bus.log == [("read", 0x0A00_0060, 4)]

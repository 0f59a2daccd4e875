"""Exit decoding on synthetic kvm_run structures (a fake run area, built with cffi)."""
from pyvmm import exits
from pyvmm._ffi import const, ffi


def _run():
    return ffi.new("struct kvm_run *")


def test_mmio_write_decodes_address_data_and_length():
    run = _run()
    run.exit_reason = const("KVM_EXIT_MMIO")
    run.mmio.phys_addr = 0x0A000008
    run.mmio.len = 4
    run.mmio.is_write = 1
    for i, b in enumerate(b"\x78\x56\x34\x12"):
        run.mmio.data[i] = b
    ex = exits.decode(run)
    assert ex == exits.MmioExit(0x0A000008, b"\x78\x56\x34\x12", 4, True)


def test_mmio_read_completion_fills_data():
    run = _run()
    run.exit_reason = const("KVM_EXIT_MMIO")
    run.mmio.len = 2
    ex = exits.decode(run)
    assert not ex.is_write and ex.data == b"\0\0"
    exits.complete_mmio_read(run, b"\xaa\xbb\xcc")
    assert bytes(ffi.buffer(run.mmio.data, 3)) == b"\xaa\xbb\x00"


def test_oversized_mmio_length_is_clamped():
    run = _run()
    run.exit_reason = const("KVM_EXIT_MMIO")
    run.mmio.len = 0xFFFFFFFF
    run.mmio.is_write = 1
    assert len(exits.decode(run).data) == 8


def test_system_event_reset_and_crash():
    run = _run()
    run.exit_reason = const("KVM_EXIT_SYSTEM_EVENT")
    run.system_event.type = const("KVM_SYSTEM_EVENT_RESET")
    run.system_event.ndata = 1
    run.system_event.data[0] = 7
    ex = exits.decode(run)
    assert ex.name == "RESET" and ex.data == (7,)
    run.system_event.type = const("KVM_SYSTEM_EVENT_CRASH")
    run.system_event.ndata = 1000  # a bogus count is clamped, never overruns
    assert exits.decode(run).name == "CRASH"
    assert len(exits.decode(run).data) == 16


def test_unknown_exit_is_a_value():
    run = _run()
    run.exit_reason = 999
    ex = exits.decode(run)
    assert isinstance(ex, exits.OtherExit) and ex.reason == 999


def test_fail_entry_and_nisv():
    run = _run()
    run.exit_reason = const("KVM_EXIT_FAIL_ENTRY")
    run.fail_entry.hardware_entry_failure_reason = 5
    run.fail_entry.cpu = 1
    assert exits.decode(run) == exits.FailEntryExit(5, 1)
    run.exit_reason = const("KVM_EXIT_ARM_NISV")
    run.arm_nisv.fault_ipa = 0x1000
    assert exits.decode(run).fault_ipa == 0x1000

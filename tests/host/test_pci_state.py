"""Saved state of the PCI side (pyvmm/machine/pci_devices.py, its.py,
pyvmm/devices/virtio_pci.py): a virtio-pci function's state round trip
through JSON into a fresh machine's PCI side (BAR mapped again, routes and
irqfds made again, the owed message signalled after the ITS), the ITS
restore order arm-vgic-its.rst prescribes, the flush before saving, and
every malformed field refused with the field named before anything changes.
The VM and ITS are fakes (they record the calls); the eventfds are real."""
import copy
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvmm._ffi import const
from pyvmm.boot import layout
from pyvmm.devices import msix as msix_mod
from pyvmm.devices import pci, virtio_pci as vp
from pyvmm.devices.bus import MmioBus
from pyvmm.errors import SnapshotError, UsageProblem
from pyvmm.machine import gic_regs, its, pci_devices
from pyvmm.memory import GuestMemory
from pyvmm.snapshot import machine_snapshot, schema
from test_pci_transport import RAM, WINDOW, Backend, FakeVm, bring_up, entry, make

ITS_REGS = const("KVM_DEV_ARM_VGIC_GRP_ITS_REGS")
CTRL = const("KVM_DEV_ARM_VGIC_GRP_CTRL")


class FakeItsVm(FakeVm):
    """FakeVm whose ITS keeps the registers written to it and answers them (a fake)."""

    def create_device(self, dev_type):
        vm = self
        regs = {gic_regs.GITS_IIDR: 0x4301_043B}

        class Dev:
            def set_device_attr(self, group, attr, value=None, ctype="uint64_t"):
                vm.attrs.append((group, attr, value))
                if group == ITS_REGS:
                    regs[attr] = value

            def get_device_attr(self, group, attr, ctype="uint64_t"):
                return regs.get(attr, 0)

            def close(self):
                vm.attrs.append("closed")
        return Dev()


def machine_pci(vm):
    bus = MmioBus()
    mem = GuestMemory()
    mem.add(RAM, 16 << 20)
    devs = pci_devices.PciDevices(vm, bus, type("Io", (), {"add_kick": lambda self, fd, fn: None})(), 96)
    t = devs.add_virtio(mem, Backend(), "virtio-net-pci")
    return devs, t, bus


def guest_programs(devs, t):
    """What a guest's driver leaves: BAR0 in the window, decoding on, the
    queues up with vectors, MSI-X on with vectors 0 and 1 unmasked and 2
    masked, and a message vector 2 owes; the ITS enabled with its tables."""
    t.pci_write(pci.BAR0, WINDOW.to_bytes(4, "little"))
    t.pci_write(pci.COMMAND, (pci.COMMAND_MEMORY | pci.COMMAND_MASTER).to_bytes(2, "little"))
    bring_up(t, vectors=(1, 2), config_vector=0)
    for v, masked in ((0, False), (1, False), (2, True)):
        t.write(vp.MSIX_TABLE + 16 * v, entry(layout.ITS_TRANSLATER, 0x20 + v, masked)[:8])
        t.write(vp.MSIX_TABLE + 16 * v + 8, entry(layout.ITS_TRANSLATER, 0x20 + v, masked)[8:])
    at = t.pci.cap_offset(msix_mod.CAP_ID)
    t.pci_write(at + 2, msix_mod.CONTROL_ENABLE.to_bytes(2, "little"))
    devs.functions[0].vectors.signal(2)
    t._interrupt(vp.INT_USED_BUFFER)  # the ISR keeps the bit: an MSI-X driver never reads it
    d = devs.its.device
    for off, value in ((gic_regs.GITS_BASER, 1 << 63 | 0x4100_0000), (gic_regs.GITS_BASER + 8, 1 << 63 | 0x4101_0000),
                       (gic_regs.GITS_CBASER, 1 << 63 | 0x4102_0000), (gic_regs.GITS_CWRITER, 0x40),
                       (gic_regs.GITS_CREADR, 0x40), (gic_regs.GITS_CTLR, gic_regs.GITS_CTLR_ENABLED)):
        d.set_device_attr(ITS_REGS, off, value)


def saved_machine():
    vm = FakeItsVm()
    devs, t, _ = machine_pci(vm)
    guest_programs(devs, t)
    gic = FakeVm().create_device(0)
    devs.flush(gic)
    state = json.loads(json.dumps(devs.save_state()))  # what a manifest carries
    devs.close()
    return state


def test_a_function_and_the_its_come_back_as_the_guest_left_them():
    state = saved_machine()
    assert state["version"] == 1 and [f["slot"] for f in state["functions"]] == [0]
    assert state["functions"][0]["state"]["pending"] == [2]
    assert state["functions"][0]["state"]["transport"]["interrupt_status"] == vp.INT_USED_BUFFER
    assert state["functions"][0]["state"]["queue_vectors"] == [1, 2]
    vm = FakeItsVm()
    devs, t, bus = machine_pci(vm)
    vecs = devs.functions[0].vectors
    try:
        vm.attrs.clear()
        devs.load_state(state)
        assert bus.find(WINDOW + vp.NOTIFY).device is t  # BAR0 decoded where the guest put it
        assert [(a, n) for a, n, f in vm.ioeventfds] == [(WINDOW + vp.NOTIFY, 2), (WINDOW + vp.NOTIFY + 4, 2)]
        msi = [e for e in vm.routing[-1] if e[1] == const("KVM_IRQ_ROUTING_MSI")]
        assert [(e[0], e[5], e[6]) for e in msi] == [(vecs.gsis[0], 0x20, 0), (vecs.gsis[1], 0x21, 0)]
        assert [(fd, gsi) for fd, gsi, _ in vm.irqfds] == [(vecs.fds[0], vecs.gsis[0]), (vecs.fds[1], vecs.gsis[1])]
        assert not vecs.pending(2) and vm.attrs == []  # nothing owed signalled, the ITS untouched, until after RAM
        devs.restore_its()
        order = [(g, a) for g, a, _ in vm.attrs]
        bases = [(ITS_REGS, gic_regs.GITS_BASER + 8 * n) for n in range(gic_regs.GITS_BASERS)]
        assert order == ([(ITS_REGS, gic_regs.GITS_IIDR)] + bases
                         + [(ITS_REGS, gic_regs.GITS_CBASER), (ITS_REGS, gic_regs.GITS_CREADR),
                            (ITS_REGS, gic_regs.GITS_CWRITER), (CTRL, const("KVM_DEV_ARM_ITS_RESTORE_TABLES")),
                            (ITS_REGS, gic_regs.GITS_CTLR)])
        devs.restore_its()  # once: the next load's registers only
        assert len(vm.attrs) == len(order)
        t.after_restore()
        assert vecs.pending(2)  # the owed message, still owed while masked (the PBA shows it)
        assert t.read(vp.MSIX_PBA, 8) == (0b100).to_bytes(8, "little")
        assert t.queue_call(0, -1) == vecs.fds[1] and t.queue_call(1, -1) == vecs.fds[2]  # vhost's calls
        again = json.loads(json.dumps(devs.save_state()))
        assert again == state
    finally:
        devs.close()


def test_saving_flushes_the_its_tables_and_the_lpi_pending_bits():
    vm, gic_vm = FakeItsVm(), FakeVm()
    devs, _, _ = machine_pci(vm)
    gic = gic_vm.create_device(0)
    vm.attrs.clear()
    devs.flush(gic)
    devs.close()
    assert vm.attrs[0] == (CTRL, const("KVM_DEV_ARM_ITS_SAVE_TABLES"), None)
    assert gic_vm.attrs == [(CTRL, const("KVM_DEV_ARM_VGIC_SAVE_PENDING_TABLES"), None)]


def _mutate(state, path, value):
    s = copy.deepcopy(state)
    d = s
    for p in path[:-1]:
        d = d[p]
    if value is KeyError:
        del d[path[-1]]
    else:
        d[path[-1]] = value
    return s


def _b64(data):
    import base64

    return base64.b64encode(data).decode()


F = ("functions", 0, "state")


def _bad_config_space(state, byte, value):
    import base64

    cs = bytearray(base64.b64decode(state["functions"][0]["state"]["config_space"]))
    cs[byte] = value
    return _b64(bytes(cs))


@pytest.mark.parametrize("path,value,message", [
    (("version",), 2, r"pci state is version 2, this pyvmm reads up to 1"),
    (("its",), KeyError, r"lacks 'its'"),
    (("bogus",), 1, r"unknown fields 'bogus'"),
    (("its", "GITS_CTLR"), 1 << 32, r"pci.its state: 'GITS_CTLR' must be an integer in 0x0..0xffffffff"),
    (("its", "GITS_CBASER"), -1, r"'GITS_CBASER' must be an integer"),
    (("its", "GITS_BASER"), [0] * 7, r"'GITS_BASER' has 7 entries, expected 8"),
    (("its", "GITS_BASER"), [True] + [0] * 7, r"GITS_BASER\[0\] must be a 64-bit unsigned integer"),
    (("functions",), [{}] * 33, r"'functions' has 33 entries, more than the 32 device slots"),
    (("functions", 0, "slot"), 32, r"functions\[0\] state: 'slot' must be an integer in 0x0..0x1f"),
    (("functions", 0, "device_id"), "1", r"'device_id' must be an integer"),
    (("functions", 0, "state"), [], r"'state' must be a JSON object"),
])
def test_a_malformed_pci_section_is_refused_naming_the_field(path, value, message):
    with pytest.raises(UsageProblem, match=message):
        pci_devices.check_state(_mutate(saved_machine(), path, value))


def test_functions_out_of_slot_order_or_of_another_machine_are_refused():
    state = saved_machine()
    two = _mutate(state, ("functions",), state["functions"] * 2)
    with pytest.raises(UsageProblem, match=r"'slot' 0 does not follow the previous function's 0"):
        pci_devices.check_state(two)
    vm = FakeItsVm()
    devs, t, _ = machine_pci(vm)
    try:
        with pytest.raises(SnapshotError, match="snapshot has 0 PCI functions, its configuration makes 1"):
            devs.load_state(_mutate(state, ("functions",), []))
        with pytest.raises(SnapshotError, match="is device id 2 in slot 0, the machine's is device id 1"):
            devs.load_state(_mutate(state, ("functions", 0, "device_id"), 2))
    finally:
        devs.close()


@pytest.mark.parametrize("key,value,message", [
    ("version", 2, r"virtio-pci 00:00.0 state is version 2, this pyvmm reads up to 1"),
    ("pending", KeyError, r"lacks 'pending'"),
    ("config_space", "!!", r"'config_space' is not valid base64"),
    ("config_space", _b64(bytes(255)), r"config space of 255 bytes, not 256"),
    ("msix_table", _b64(bytes(47)), r"MSI-X table of 47 bytes, not the 48 of 3 vectors"),
    ("msix_table", _b64(bytes(13) + b"\x02" + bytes(34)), r"MSI-X table byte 0xd is 0x02: a reserved bit is set"),
    ("msix_table", _b64(b"\x03" + bytes(47)), r"MSI-X table byte 0x0 is 0x03: a reserved bit is set"),
    ("config_vector", 3, r"'config_vector' must be a vector below 3 or 0xffff"),
    ("config_vector", True, r"'config_vector' must be a vector below 3"),
    ("queue_vectors", [1], r"'queue_vectors' has 1 entries, expected 2"),
    ("queue_vectors", [1, 0xFFFE], r"queue_vectors\[1\] must be a vector below 3 or 0xffff"),
    ("pending", [3], r"'pending' must be a list of integers in 0x0..0x2"),
    ("pending", [1, 1], r"'pending' must be strictly increasing"),
    ("transport", {}, r"virtio-pci 00:00.0 state lacks"),
])
def test_a_malformed_function_state_is_refused_before_anything_changes(key, value, message):
    state = saved_machine()
    vm = FakeItsVm()
    devs, t, bus = machine_pci(vm)
    try:
        before = json.dumps(t.save_state())
        with pytest.raises(UsageProblem, match=message):
            t.load_state(_mutate(state, F + (key,), value)["functions"][0]["state"])
        assert json.dumps(t.save_state()) == before and vm.irqfds == [] and bus.find(WINDOW) is None
    finally:
        devs.close()


@pytest.mark.parametrize("byte,value,what", [(pci.VENDOR_ID, 0x00, "0x0"), (pci.CLASS_PROG + 2, 0x01, "0xb"),
                                            (pci.BAR0, 0x01, "0x10"), (pci.STATUS, 0x00, "0x6")])
def test_config_space_bits_no_guest_write_changes_must_be_the_functions_own(byte, value, what):
    state = saved_machine()
    t, _, _ = make()
    with pytest.raises(UsageProblem, match=rf"config space byte {what} is {value:#04x}, its read-only bits"):
        t.load_state(_mutate(state, F + ("config_space",), _bad_config_space(state, byte, value))["functions"][0]["state"])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 255), st.integers(0, 255)), min_size=1, max_size=6))
def test_any_config_space_is_taken_only_as_guest_writes_could_leave_it(flips):
    """Hostile config bytes: refused, or taken with every read-only bit the
    function's own and BAR0 decoded only inside the window."""
    import base64

    state = saved_machine()
    cs = bytearray(base64.b64decode(state["functions"][0]["state"]["config_space"]))
    for byte, value in flips:
        cs[byte] = value
    devs, t, bus = machine_pci(FakeItsVm())
    own, mask = bytes(t.pci.cfg), bytes(t.pci.wmask)
    try:
        try:
            t.load_state(_mutate(state, F + ("config_space",), _b64(bytes(cs)))["functions"][0]["state"])
        except UsageProblem as e:
            assert "read-only bits" in str(e)
            return
        assert all(not ((a ^ b) & ~m & 0xFF) for a, b, m in zip(t.pci.cfg, own, mask))
        for mp in bus.mappings():
            if mp.device is t:
                assert pci_devices.in_window(mp.base, vp.BAR_SIZE) and t.pci.memory_enabled
    finally:
        devs.close()


def test_inspect_shows_the_its_and_the_functions():
    from pyvmm.snapshot import describe

    pci = saved_machine()
    unknown = json.loads(json.dumps(pci["functions"][0]))
    unknown.update(slot=1, device_id=42)
    pci["functions"].append(unknown)
    lines = describe._machine_lines({"config": {"cpus": 1, "mem": 256 << 20}, "devices": {"pci": pci}})
    assert "its: enabled" in lines
    assert "virtio-net on pci 00:00.0: status 0xf, 2 of 2 queues ready, 1 MSI-X vectors owed" in lines
    assert "virtio device 42 on pci 00:01.0: status 0xf, 2 of 2 queues ready, 1 MSI-X vectors owed" in lines


def test_restore_sequence_is_the_documented_order_and_checks_every_register():
    regs = {"GITS_CTLR": 1, "GITS_IIDR": 0x4301_043B, "GITS_CBASER": 5, "GITS_CREADR": 0x20,
            "GITS_CWRITER": 0x40, "GITS_BASER": list(range(8))}
    seq = its.restore_sequence(its.check_state(regs))
    assert seq[0] == ("regs", gic_regs.GITS_IIDR, 0x4301_043B)
    assert seq[-2:] == [("ctrl", const("KVM_DEV_ARM_ITS_RESTORE_TABLES"), 0), ("regs", gic_regs.GITS_CTLR, 1)]
    offsets = [a for g, a, _ in seq if g == "regs"]
    assert offsets.index(gic_regs.GITS_BASER + 56) < offsets.index(gic_regs.GITS_CBASER) \
        < offsets.index(gic_regs.GITS_CREADR) < offsets.index(gic_regs.GITS_CWRITER)
    assert (gic_regs.GITS_CTLR, gic_regs.GITS_IIDR, gic_regs.GITS_CBASER, gic_regs.GITS_CWRITER,
            gic_regs.GITS_CREADR, gic_regs.GITS_BASER) == (0x0, 0x4, 0x80, 0x88, 0x90, 0x100)
    with pytest.raises(UsageProblem, match="lacks 'GITS_CREADR'"):
        its.check_state({k: v for k, v in regs.items() if k != "GITS_CREADR"})


def test_a_pci_machines_configuration_keeps_its_transport_and_the_section_matches_it():
    from pyvmm.machine import MachineConfig, devspec

    c = MachineConfig(kernel="/k", mem=256 << 20, nets=[devspec.parse_net("tap=t0,mac=52:54:00:00:00:01,transport=pci"),
                                                        devspec.parse_net("tap=t1,mac=52:54:00:00:00:02")])
    d = json.loads(json.dumps(machine_snapshot.config_to_json(c)))
    assert [n.get("transport") for n in d["nets"]] == ["pci", None]  # mmio's stays as older pyvmm reads it
    back = schema.config_from_manifest(d)
    assert [n.transport for n in back.nets] == ["pci", "mmio"]
    d["nets"][0]["transport"] = "pci,vhost=on"
    with pytest.raises(UsageProblem, match=r"nets\[0\] state: 'transport' must be one of mmio, pci"):
        schema.config_from_manifest(d)
    state = saved_machine()
    devices = schema.StateReader("snapshot machine.devices", {"uart": {}, "virtio": [], "pci": state},
                                 ("uart", "virtio"), optional=("pci",))
    schema._pci(devices, back)
    with pytest.raises(UsageProblem, match="has 'pci' while its configuration has no virtio-pci device"):
        schema._pci(devices, schema.config_from_manifest(dict(d, nets=[d["nets"][1]])))
    empty = schema.StateReader("snapshot machine.devices", {"uart": {}, "virtio": []}, ("uart", "virtio"))
    with pytest.raises(UsageProblem, match="lacks 'pci' while its configuration has 1 virtio-pci devices"):
        schema._pci(empty, back)

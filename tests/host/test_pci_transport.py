"""The pure parts of virtio-pci with MSI-X: a function's configuration space
(header, capability chain, BAR sizing and decoding), the ECAM host bridge,
MSI-X table/PBA semantics, the transport's common configuration driven as
Linux's virtio_pci_modern drives it, the GSI routing entries, the vectors'
irqfds (against a fake VM), BAR moves on the MMIO bus, the device-tree
nodes (dtc and libfdt), and a hostile guest's config/BAR/MSI-X writes."""
import os
import shutil
import subprocess
import threading
import types

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvmm._ffi import const
from pyvmm.boot import fdt, layout
from pyvmm.devices import msix as msix_mod
from pyvmm.devices import pci, virtio_pci as vp
from pyvmm.devices.bus import MmioBus
from pyvmm.devices.msix import NO_VECTOR, Msix
from pyvmm.devices.pci_host import PciHost, requester_id
from pyvmm.devices.virtio_mmio import (ACKNOWLEDGE, DEVICE_NEEDS_RESET, DRIVER, DRIVER_OK, FEATURES_OK,
                                       VIRTIO_F_VERSION_1, VirtioBackend)
from pyvmm.errors import UsageProblem
from pyvmm.machine.devspec import parse_net
from pyvmm.machine.gsi_routes import GsiRoutes
from pyvmm.memory import GuestMemory

RAM = 0x4000_0000
WINDOW = layout.PCI_MMIO_BASE


class FakeVectors:
    """What VirtioPci asks of the machine's MsiVectors (a fake: records the calls)."""

    def __init__(self):
        self.signalled, self.changes, self.owed = [], [], set()

    def signal(self, v):
        self.signalled.append(v)

    def fd(self, v):
        return 1000 + v

    def changed(self, v):
        self.changes.append(v)

    def pending(self, v):
        return v in self.owed

    def forget_pending(self):
        self.owed = set()


class Backend(VirtioBackend):
    device_id = 1
    num_queues = 2
    features = VIRTIO_F_VERSION_1 | 1 << 5

    def __init__(self):
        self.notified = []

    def config_read(self, offset, length):
        return bytes((offset + i) & 0xFF for i in range(length))

    def queue_notify(self, transport, index):
        self.notified.append(index)


def make(moves=None):
    mem = GuestMemory()
    mem.add(RAM, 16 << 20)
    vectors = FakeVectors()
    t = vp.VirtioPci(mem, Backend(), vectors, moves.append if moves is not None else None)
    return t, vectors, mem


def cfg(t, off, n):
    return int.from_bytes(t.pci_read(off, n), "little")


def caps(t):
    """(offset, id, bytes) of each capability, walked from the pointer as an OS does."""
    out, at = [], cfg(t, pci.CAPABILITIES_POINTER, 1)
    while at:
        assert at % 4 == 0 and at >= 0x40 and len(out) < 48
        out.append((at, cfg(t, at, 1), t.pci_read(at, 20)))
        at = cfg(t, at + 1, 1)
    return out


# ---- configuration space -----------------------------------------------------------------

def test_header_identifies_a_modern_virtio_net_function_with_a_capability_list():
    t, _, _ = make()
    assert cfg(t, pci.VENDOR_ID, 2) == 0x1AF4 and cfg(t, pci.DEVICE_ID, 2) == 0x1041
    assert cfg(t, pci.REVISION_ID, 1) == 1 and cfg(t, pci.CLASS_PROG, 3) == 0x020000
    assert cfg(t, pci.HEADER_TYPE, 1) == 0 and cfg(t, pci.SUBSYSTEM_ID, 2) >= 0x40
    assert cfg(t, pci.STATUS, 2) & pci.STATUS_CAP_LIST
    assert cfg(t, pci.INTERRUPT_PIN, 1) == 0  # no INTx
    t.pci_write(pci.VENDOR_ID, b"\0\0\0\0")  # read-only
    assert cfg(t, pci.VENDOR_ID, 4) == 0x1041_1AF4


def test_capability_chain_has_the_four_virtio_structures_and_msix():
    t, _, _ = make()
    found = caps(t)
    assert [c[1] for c in found] == [vp.CAP_VENDOR] * 5 + [msix_mod.CAP_ID]
    virtio = {}
    for at, _, raw in found[:5]:
        cap_len, cfg_type, bar = raw[2], raw[3], raw[4]
        offset, length = int.from_bytes(raw[8:12], "little"), int.from_bytes(raw[12:16], "little")
        assert bar == 0 and offset + length <= vp.BAR_SIZE
        virtio[cfg_type] = (cap_len, offset, length, raw[16:20])
    assert virtio[vp.CFG_COMMON][1:3] == (vp.COMMON, 0x3C)
    assert virtio[vp.CFG_ISR][1] == vp.ISR and virtio[vp.CFG_DEVICE][1] == vp.DEVICE
    assert virtio[vp.CFG_NOTIFY][0] == 20 and int.from_bytes(virtio[vp.CFG_NOTIFY][3], "little") == 4
    assert virtio[vp.CFG_PCI][0] == 20
    at = found[5][0]
    control = cfg(t, at + 2, 2)
    assert control & 0x7FF == 2  # 3 vectors: config + 2 queues
    assert cfg(t, at + 4, 4) == vp.MSIX_TABLE and cfg(t, at + 8, 4) == vp.MSIX_PBA  # BIR 0


def test_bar_sizing_protocol_and_decoding():
    moves = []
    t, _, _ = make(moves)
    assert cfg(t, pci.BAR0, 4) == pci.BAR_MEM64
    t.pci_write(pci.BAR0, b"\xff" * 4)
    t.pci_write(pci.BAR1, b"\xff" * 4)
    low, high = cfg(t, pci.BAR0, 4), cfg(t, pci.BAR1, 4)
    size = (~((high << 32 | low) & ~0xF) + 1) & (1 << 64) - 1
    assert size == vp.BAR_SIZE and low & 0xF == pci.BAR_MEM64
    assert moves == []  # memory decoding is off
    t.pci_write(pci.BAR0, (WINDOW + 0x8000).to_bytes(4, "little"))
    t.pci_write(pci.BAR1, bytes(4))
    t.pci_write(pci.COMMAND, (pci.COMMAND_MEMORY | pci.COMMAND_MASTER).to_bytes(2, "little"))
    assert moves == [WINDOW + 0x8000]
    t.pci_write(pci.BAR0, (WINDOW + 0x10123).to_bytes(4, "little"))  # low bits are the BAR's own
    assert moves[-1] == WINDOW + 0x10000 and cfg(t, pci.BAR0, 4) == WINDOW + 0x10004
    t.pci_write(pci.COMMAND, b"\0\0")
    assert moves[-1] is None


def test_bar_through_the_pci_configuration_access_capability():
    t, _, _ = make()
    at = next(a for a, cap_id, raw in caps(t) if cap_id == vp.CAP_VENDOR and raw[3] == vp.CFG_PCI)
    data = at + vp.PciCfgAccess.DATA
    t.pci_write(at + 8, (vp.COMMON + vp.C_NUM_QUEUES).to_bytes(4, "little"))
    t.pci_write(at + 12, (2).to_bytes(4, "little"))
    assert cfg(t, data, 2) == 2  # num_queues, read through the window
    t.pci_write(at + 8, (vp.COMMON + vp.C_QUEUE_SELECT).to_bytes(4, "little"))
    t.pci_write(data, (1).to_bytes(2, "little"))
    assert t.queue_sel == 1
    t.pci_write(at + 12, (3).to_bytes(4, "little"))  # no such length: nothing moves
    t.pci_write(data, (0).to_bytes(4, "little"))
    assert t.queue_sel == 1
    t.pci_write(at + 4, b"\x02")  # bar is one byte; only BAR0 exists
    t.pci_write(at + 12, (2).to_bytes(4, "little"))
    t.pci_write(data, (0).to_bytes(2, "little"))
    assert t.queue_sel == 1


def test_ecam_routes_by_device_and_absent_functions_read_all_ones():
    host = PciHost()
    t, _, _ = make()
    assert host.add(t) == 0
    assert host.read(0, 4) == (0x1041_1AF4).to_bytes(4, "little")
    assert host.read(1 << 15, 4) == b"\xff" * 4  # device 1: nobody
    assert host.read(1 << 12, 2) == b"\xff" * 2  # function 1 of device 0
    assert host.read(1 << 20, 4) == b"\xff" * 4  # bus 1
    assert host.read(0x100, 4) == bytes(4)  # no extended capabilities
    host.write(0xFFE, b"\xff" * 4)  # across the function's end: ignored
    assert requester_id(3) == 0x18 and requester_id(1, 2, 1) == 0x10A


def test_net_transport_option():
    assert parse_net("tap=t0").transport == "mmio"
    assert parse_net("tap=t0,transport=pci,vhost=off").transport == "pci"
    with pytest.raises(UsageProblem, match=r"^--net tap=t0,transport=isa: transport=isa: choose mmio or pci$"):
        parse_net("tap=t0,transport=isa")


# ---- MSI-X -----------------------------------------------------------------------------------

def entry(address, data, masked):
    return address.to_bytes(8, "little") + data.to_bytes(4, "little") + int(masked).to_bytes(4, "little")


def test_msix_vectors_start_masked_and_deliver_only_when_enabled_and_unmasked():
    changes, owed = [], {1}
    m = Msix(3, 0x4000, 0x6000, changes.append, lambda v: v in owed)
    assert all(m.entry(v)[2] for v in range(3)) and not any(m.may_deliver(v) for v in range(3))
    m.write_table(16, entry(layout.ITS_TRANSLATER, 0x21, False))
    assert changes == [1] and m.entry(1) == (layout.ITS_TRANSLATER, 0x21, False)
    assert not m.may_deliver(1)  # MSI-X not enabled yet
    m.control_written(msix_mod.CONTROL_ENABLE)
    assert changes[1:] == [0, 1, 2] and m.may_deliver(1) and not m.may_deliver(0)
    m.control_written(msix_mod.CONTROL_ENABLE | msix_mod.CONTROL_FUNCTION_MASK)
    assert not m.may_deliver(1)
    assert m.read_pba(0, 8) == (0b10).to_bytes(8, "little")
    m.write_table(16 + 12, (0xFFFF_FFFF).to_bytes(4, "little"))  # reserved control bits stay 0
    assert m.read_table(16 + 12, 4) == (1).to_bytes(4, "little")
    m.write_table(0, b"\xff\xff\xff\xff")  # the address's low two bits are reserved
    assert m.read_table(0, 4) == (0xFFFF_FFFC).to_bytes(4, "little")


def test_msix_accesses_outside_the_table_touch_nothing():
    changes = []
    m = Msix(2, 0x4000, 0x6000, changes.append, lambda v: True)
    before = bytes(m.table)
    for off in (32, 4096, -4, 1 << 40):
        m.write_table(off, b"\xff" * 8)
        assert m.read_table(off, 4) == bytes(4)
    assert bytes(m.table) == before and changes == []
    assert m.read_pba(0, 8) == (0b11).to_bytes(8, "little") and m.read_pba(8, 8) == bytes(8)


# ---- the transport's registers as Linux's driver uses them -----------------------------------

def w(t, off, value, n):
    t.write(off, value.to_bytes(n, "little"))


def r(t, off, n):
    return int.from_bytes(t.read(off, n), "little")


def bring_up(t, q_addr=RAM + 0x10000, vectors=(1, 2), config_vector=0):
    w(t, vp.C_DEVICE_STATUS, ACKNOWLEDGE | DRIVER, 1)
    w(t, vp.C_DEVICE_FEATURE_SELECT, 1, 4)
    assert r(t, vp.C_DEVICE_FEATURE, 4) == 1  # VERSION_1
    w(t, vp.C_DRIVER_FEATURE_SELECT, 1, 4)
    w(t, vp.C_DRIVER_FEATURE, 1, 4)
    w(t, vp.C_DEVICE_STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK, 1)
    assert r(t, vp.C_DEVICE_STATUS, 1) & FEATURES_OK
    w(t, vp.C_CONFIG_MSIX_VECTOR, config_vector, 2)
    assert r(t, vp.C_NUM_QUEUES, 2) == 2
    for i, vec in enumerate(vectors):
        w(t, vp.C_QUEUE_SELECT, i, 2)
        assert r(t, vp.C_QUEUE_SIZE, 2) == 256 and r(t, vp.C_QUEUE_NOTIFY_OFF, 2) == i
        w(t, vp.C_QUEUE_SIZE, 64, 2)
        w(t, vp.C_QUEUE_MSIX_VECTOR, vec, 2)
        base = q_addr + i * 0x4000
        for field, addr in ((vp.C_QUEUE_DESC, base), (vp.C_QUEUE_DRIVER, base + 0x1000),
                            (vp.C_QUEUE_DEVICE, base + 0x2000)):
            w(t, field, addr & 0xFFFF_FFFF, 4)  # as vp_iowrite64_twopart
            w(t, field + 4, addr >> 32, 4)
        w(t, vp.C_QUEUE_ENABLE, 1, 2)
    w(t, vp.C_DEVICE_STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK, 1)


def test_driver_bring_up_vectors_and_interrupts():
    t, vectors, _ = make()
    bring_up(t)
    assert t.driver_ok and t.driver_features == VIRTIO_F_VERSION_1
    w(t, vp.C_QUEUE_SELECT, 1, 2)
    assert r(t, vp.C_QUEUE_MSIX_VECTOR, 2) == 2 and r(t, vp.C_QUEUE_ENABLE, 2) == 1
    assert r(t, vp.C_QUEUE_DESC, 8) == RAM + 0x14000
    assert t.queue_call(0, 7) == 1001 and t.queue_call(1, 7) == 1002  # vhost's call: the vector's eventfd
    t.signal_used(t.queues[1]) if t.queues[1].wants_interrupt() else None
    t._interrupt(2)  # a configuration change
    assert vectors.signalled[-1] == 0
    assert r(t, vp.ISR, 1) & 2 and r(t, vp.ISR, 1) == 0  # read clears
    assert t.read(vp.DEVICE + 4, 2) == bytes((4, 5))  # the backend's config space
    t.write(vp.NOTIFY + 4, (1).to_bytes(2, "little"))  # a notify the ioeventfd missed
    assert t.backend.notified == [1]
    w(t, vp.C_DEVICE_STATUS, 0, 1)  # reset: vectors forgotten
    assert r(t, vp.C_CONFIG_MSIX_VECTOR, 2) == NO_VECTOR and t.queue_call(0, 7) == -1


def test_a_vector_the_function_lacks_reads_back_as_no_vector():
    t, _, _ = make()
    w(t, vp.C_CONFIG_MSIX_VECTOR, 3, 2)
    assert r(t, vp.C_CONFIG_MSIX_VECTOR, 2) == NO_VECTOR
    w(t, vp.C_QUEUE_SELECT, 0, 2)
    w(t, vp.C_QUEUE_MSIX_VECTOR, 0x7FF, 2)
    assert r(t, vp.C_QUEUE_MSIX_VECTOR, 2) == NO_VECTOR
    w(t, vp.C_QUEUE_SELECT, 9, 2)  # no such queue: size 0, vector writes go nowhere
    assert r(t, vp.C_QUEUE_SIZE, 2) == 0
    w(t, vp.C_QUEUE_MSIX_VECTOR, 1, 2)
    assert t.queue_vectors == [NO_VECTOR, NO_VECTOR]


def test_queue_outside_guest_ram_puts_the_device_in_its_error_state():
    t, vectors, _ = make()
    bring_up(t, q_addr=RAM + (16 << 20) - 0x1000)  # the rings run past the end of RAM
    assert t.status & DEVICE_NEEDS_RESET and not t.driver_ok
    assert vectors.signalled[-1] == 0  # the configuration-change vector


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["cfg", "bar"]), st.integers(-8, 0x9000), st.binary(min_size=0, max_size=9)),
                max_size=60))
def test_hostile_config_and_bar_writes_never_raise_or_map_outside_the_window(ops):
    """Any sequence of config-space and BAR writes: no exception, and the BAR
    is only ever mapped (by the machine) at an address inside the window."""
    moves = []
    t, _, mem = make(moves)
    for kind, off, data in ops:
        if kind == "cfg":
            t.pci_write(off & 0xFFF, data)
            t.pci_read(off & 0xFFF, len(data) or 1)
        else:
            t.write(off, data)
            t.read(off, len(data) or 1)
    assert len(mem.regions) == 1  # nothing grew guest memory
    for q in t.queues:
        if q.ready:
            assert q.desc_addr >= RAM and q.used_addr + 6 + 8 * q.size <= RAM + (16 << 20)


# ---- routes, vectors and BARs against a fake VM ----------------------------------------------

def test_routing_table_keeps_every_spi_route_and_adds_msis_above_them():
    calls = []
    routes = GsiRoutes(types.SimpleNamespace(set_gsi_routing=calls.append), nr_spis=96)
    g = routes.allocate()
    assert g == 96 and routes.allocate() == 97
    assert routes.set_msi(g, layout.ITS_TRANSLATER, 5, 0x08) and not routes.set_msi(g, layout.ITS_TRANSLATER, 5, 0x08)
    with pytest.raises(ValueError):
        routes.set_msi(200, 0, 0, 0)
    routes.commit()
    table = calls[-1]
    assert table[:96] == [(n, const("KVM_IRQ_ROUTING_IRQCHIP"), 0, 0, n, 0, 0) for n in range(96)]
    assert table[96:] == [(96, const("KVM_IRQ_ROUTING_MSI"), const("KVM_MSI_VALID_DEVID"),
                           layout.ITS_TRANSLATER, 0, 5, 0x08)]
    assert routes.clear(g) and len(routes.entries()) == 96


def test_set_gsi_routing_lays_the_entries_out_as_the_uapi_does(monkeypatch):
    from pyvmm._ffi import ffi
    from pyvmm.vm import Vm

    seen = []

    def ioctl(self, name, arg=0, reg=None):
        buf = bytes(ffi.buffer(arg, ffi.sizeof("struct kvm_irq_routing") + arg.nr * 48))
        seen.append((name, buf))
        return 0
    monkeypatch.setattr(Vm, "ioctl", ioctl)
    vm = Vm.__new__(Vm)
    vm.set_gsi_routing([(0, 1, 0, 0, 0, 0, 0), (96, 2, 1, 0x08090040, 0, 0x2A, 0x10)])
    name, buf = seen[0]
    assert name == "KVM_SET_GSI_ROUTING"
    words = [int.from_bytes(buf[i:i + 4], "little") for i in range(0, len(buf), 4)]
    assert words[:2] == [2, 0]
    assert words[2:8] == [0, 1, 0, 0, 0, 0]  # gsi, type, flags, pad, irqchip 0, pin 0
    assert words[14:22] == [96, 2, 1, 0, 0x08090040, 0, 0x2A, 0x10]  # ... address lo/hi, data, devid


class FakeVm:
    """KVM calls the PCI side makes (a fake: records them)."""

    def __init__(self):
        self.fd = 3
        self.irqfds, self.ioeventfds, self.routing, self.attrs = [], [], [], []

    def check_extension(self, cap):
        return 1

    def create_device(self, dev_type):
        vm = self

        class Dev:
            def set_device_attr(self, group, attr, value=None, ctype="uint64_t"):
                vm.attrs.append((group, attr, value))

            def close(self):
                vm.attrs.append("closed")
        return Dev()

    def irqfd(self, fd, gsi, flags=0, resamplefd=0):
        self.irqfds.append((fd, gsi, flags))

    def ioeventfd(self, addr, length, fd, datamatch=None, flags=0):
        self.ioeventfds.append((addr, length, flags))

    def set_gsi_routing(self, entries):
        self.routing.append(entries)


def test_vectors_follow_masks_and_deliver_what_they_owe_on_unmask():
    from pyvmm.machine.msi_vectors import MsiVectors

    vm = FakeVm()
    routes = GsiRoutes(vm, 96)
    vecs = MsiVectors(vm, routes, 2, devid=0x08)
    try:
        m = Msix(2, 0x4000, 0x6000, vecs.changed, vecs.pending)
        vecs.attach(m)
        m.write_table(0, entry(layout.ITS_TRANSLATER, 7, False))
        assert vm.irqfds == []  # MSI-X not enabled
        vecs.signal(0)
        assert vecs.pending(0) and m.read_pba(0, 1) == b"\x01"
        m.control_written(msix_mod.CONTROL_ENABLE)
        assert vm.irqfds == [(vecs.fds[0], 96, 0)]
        assert vm.routing[-1][-1] == (96, const("KVM_IRQ_ROUTING_MSI"), const("KVM_MSI_VALID_DEVID"),
                                      layout.ITS_TRANSLATER, 0, 7, 0x08)
        assert os.eventfd_read(vecs.fds[0]) == 1  # the owed message, signalled once after the irqfd
        m.write_table(12, (1).to_bytes(4, "little"))  # mask vector 0
        assert vm.irqfds[-1] == (vecs.fds[0], 96, const("KVM_IRQFD_FLAG_DEASSIGN"))

        def refuse(entries):
            raise OSError(22, "Invalid argument")
        vm.set_gsi_routing = refuse  # KVM refusing a route the guest asked for: the guest runs on
        m.write_table(16, entry(0xDEAD_0000, 1, False))
        assert vecs.refused and "vector 1" in vecs.refused and not vecs.assigned[1]
    finally:
        vecs.close()
    assert vecs.fds == []


def test_bar_moves_follow_the_guest_and_never_leave_the_window():
    from pyvmm.machine.pci_devices import PciDevices

    vm, bus = FakeVm(), MmioBus()
    io = types.SimpleNamespace(add_kick=lambda fd, fn: None)
    mem = GuestMemory()
    mem.add(RAM, 16 << 20)
    devs = PciDevices(vm, bus, io, 96)
    try:
        t = devs.add_virtio(mem, Backend(), "virtio-net-pci")
        t.pci_write(pci.COMMAND, pci.COMMAND_MEMORY.to_bytes(2, "little"))
        assert [m.name for m in bus.mappings()] == ["pci ecam"]  # BAR at 0: outside the window
        t.pci_write(pci.BAR0, WINDOW.to_bytes(4, "little"))
        assert bus.find(WINDOW + vp.NOTIFY).device is t
        assert [(a, n) for a, n, f in vm.ioeventfds] == [(WINDOW + vp.NOTIFY, 2), (WINDOW + vp.NOTIFY + 4, 2)]
        for bad in (RAM, layout.PCI_ECAM_BASE, layout.PCI_MMIO_BASE - vp.BAR_SIZE):
            t.pci_write(pci.BAR0, bad.to_bytes(4, "little"))
            assert bus.find(bad + 8) is None or bus.find(bad + 8).device is not t
            assert bus.find(WINDOW) is None
        assert all(f == const("KVM_IOEVENTFD_FLAG_DEASSIGN") for a, n, f in vm.ioeventfds[2:])
    finally:
        devs.close()
    assert vm.attrs[-1] == "closed"


# ---- device tree -----------------------------------------------------------------------------

def test_device_tree_has_the_its_under_the_gic_and_the_host_bridge():
    from pyvmm.machine import its
    from pyvmm.machine.gic import VgicV3

    gic = VgicV3.__new__(VgicV3)
    gic.ncpus = 1
    blob = fdt.build(ram_size=256 << 20, mpidrs=[0], gic=gic.dt_node(its=True),
                     devices=[PciHost().dt_node(its.PHANDLE_ITS)])
    dtc = shutil.which("dtc")
    assert dtc, "dtc is needed (apt install device-tree-compiler)"
    res = subprocess.run([dtc, "-I", "dtb", "-O", "dts", "-"], input=blob, capture_output=True, check=True)
    assert b"ERROR" not in res.stderr and b"Warning" not in res.stderr, res.stderr.decode()
    libfdt = pytest.importorskip("libfdt")
    f = libfdt.Fdt(blob)
    node = f.path_offset("/intc@8000000/msi-controller@8080000")
    assert f.getprop(node, "compatible").as_str() == "arm,gic-v3-its"
    assert f.getprop(node, "#msi-cells").as_uint32() == 1
    host = f.path_offset("/pcie@3f000000")
    assert f.getprop(host, "compatible").as_str() == "pci-host-ecam-generic"
    msi_map = f.getprop(host, "msi-map")
    assert [int.from_bytes(bytes(msi_map)[i:i + 4], "big") for i in range(0, 16, 4)] == [0, its.PHANDLE_ITS, 0, 0x10000]
    assert f.get_phandle(node) == its.PHANDLE_ITS


def test_layout_keeps_the_pci_ranges_apart_from_ram_and_devices():
    spans = [(layout.GICD_BASE, layout.GICD_SIZE), (layout.ITS_BASE, layout.ITS_SIZE),
             (layout.GICR_BASE, layout.GICR_REGION_SIZE), (layout.UART_BASE, layout.UART_SIZE),
             (layout.VIRTIO_BASE, layout.VIRTIO_SLOTS * layout.VIRTIO_SLOT_SIZE),
             (layout.PCI_MMIO_BASE, layout.PCI_MMIO_SIZE), (layout.PCI_ECAM_BASE, layout.PCI_ECAM_SIZE),
             (layout.RAM_BASE, 1)]
    spans.sort()
    for (a, n), (b, _) in zip(spans, spans[1:]):
        assert a + n <= b, (hex(a), hex(b))
    assert layout.ITS_BASE % 0x10000 == 0 and layout.ITS_TRANSLATER == layout.ITS_BASE + 0x10040


_ = threading

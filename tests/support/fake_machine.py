"""What the vCPU loop (pyvmm.machine.vcpu_loop) sees of a machine, faked for
pure-logic tests: a bus that records accesses and a machine that records
how it was ended, parked and counted."""
import threading
from collections import Counter

from pyvmm.machine.machine import Machine


class RecordingBus:
    def __init__(self, answer=b"\x11\x22\x33\x44\x55\x66\x77\x88"):
        self.answer = answer
        self.log = []
        self.fast_reads = {}  # as pyvmm.devices.bus.MmioBus: none unless a test adds them
        self.trace = None

    def read(self, addr, n):
        self.log.append(("read", addr, n))
        return self.answer[:n]

    def write(self, addr, data):
        self.log.append(("write", addr, bytes(data)))


class FakeMachine:
    def __init__(self, bus):
        self.bus, self.coalesced = bus, None
        self.done = threading.Event()
        self.paused = False
        self.parked = 0
        self.outcomes = []
        self.exits = Counter()
        self.first_run_ns = None  # set by the loop before its first KVM_RUN
        self.entered = threading.Event()  # the same moment

    def pause_point(self, vcpu):
        if self.paused:  # parks once: the pause is then lifted
            self.parked += 1
            self.paused = False
        vcpu.set_immediate_exit(False)

    def finish(self, status, reason):
        self.outcomes.append((status, reason))
        self.done.set()

    def record_exits(self, counts):
        self.exits.update(counts)


class DeviceLists:
    """A machine's virtio transports as snapshot, migration and vhost-log code
    walk them (a fake): the virtio-mmio list, the virtio-pci list, and
    Machine's own :attr:`transports` over both."""

    transports = Machine.transports

    def __init__(self, virtio=(), pci_virtio=()):
        self.virtio, self.pci_virtio = list(virtio), list(pci_virtio)

"""The machine: guest RAM, the vGICv3, the MMIO bus with its devices, one
host thread per vCPU, and the run loop that turns guest events into an exit
status (a value: this module prints nothing and never exits).

Boot follows Documentation/arch/arm64/booting.rst: vCPU 0 starts at the
kernel entry with x0 = DTB address, x1-x3 = 0, MMU off, EL1h, DAIF masked
(KVM's reset state). Secondaries start powered off (KVM_ARM_VCPU_POWER_OFF);
PSCI 0.2 (KVM_ARM_VCPU_PSCI_0_2) is handled inside KVM, which exits to us only
for SYSTEM_OFF / SYSTEM_RESET (KVM_EXIT_SYSTEM_EVENT).

Stopping: set ``immediate_exit`` in every vCPU's kvm_run, then send each vCPU
thread SIGUSR1 (a no-op handler), so KVM_RUN returns EINTR wherever it is.
"""
from __future__ import annotations

import dataclasses
import enum
import errno
import mmap
import os
import select
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, List, Optional

from . import exits, regs
from ._fd import explain
from ._ffi import const, ffi, libc
from .ioctls import request
from .boot import fdt, image, layout
from .devices.bus import MmioBus
from .devices.io_thread import IoThread
from .devices.pl011 import DR as PL011_DR, SIZE as PL011_SIZE, Pl011
from .devices.virtio_blk import VirtioBlk
from .devices.virtio_console import VirtioConsole
from .devices.virtio_fs import VirtioFs
from .devices.virtio_net import VirtioNet, VirtioNetPython, format_mac, random_mac
from .devices.virtio_rng import VirtioRng
from .devices.virtio_vsock import VirtioVsock
from .devspec import FsSpec, NetSpec, VsockSpec
from .net import tap
from .devices.virtio_mmio import SIZE as VIRTIO_SIZE, VirtioMmio
from .errors import GuestError, HostUnsupported, KvmError, PyvmmError, UsageProblem
from .gic import VgicV3, spi_irq_line
from .memory import GuestMemory
from .sme import configure_vcpu, discover, parse_vl
from .vcpu import mpidr_of
from . import virtio_notify


class ExitStatus(enum.IntEnum):
    POWEROFF = 0     # the guest powered off (PSCI SYSTEM_OFF)
    ERROR = 1        # pyvmm failed at run time
    USAGE = 2        # bad options or input files
    RESET = 3        # the guest asked for a reset and on_reboot is "exit"
    CRASH = 4        # KVM crash event, failed entry, an exit pyvmm cannot continue from
    INTERRUPTED = 130  # SIGINT (Ctrl-C) or the console escape (Ctrl-A x)
    TERMINATED = 143   # SIGTERM


@dataclass
class DiskSpec:
    path: str
    readonly: bool = False


@dataclass
class MachineConfig:
    kernel: Optional[str] = None
    initrd: Optional[str] = None
    firmware: Optional[str] = None
    cmdline: Optional[str] = None
    mem: int = 512 * layout.MiB
    cpus: int = 1
    sve_max_vl: Optional[int] = None
    # SME (docs/sme.md): streaming maximum in bits, None = no SME; sve=False
    # (--no-sve) leaves SVE out, which with SME makes SME-only vCPUs.
    sme_max_vl: Optional[int] = None
    sve: bool = True
    disks: List[DiskSpec] = field(default_factory=list)
    console: str = "serial"   # serial (PL011) | virtio (virtio-console, hvc0)
    rng: bool = True  # virtio-rng fed by getrandom(2) (--no-rng: none)
    nets: List[NetSpec] = field(default_factory=list)
    vsock: Optional[VsockSpec] = None
    fss: List[FsSpec] = field(default_factory=list)
    on_reboot: str = "restart"  # restart | exit
    dump_dtb: Optional[str] = None
    kvm_path: str = "/dev/kvm"
    trace_mmio: bool = False  # count MMIO accesses per device register (--debug)


@dataclass
class Outcome:
    status: ExitStatus
    reason: str
    resets: int = 0
    exits: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    console_bytes: int = 0
    build_seconds: float = 0.0
    mmio_trace: Optional[Counter] = None


def default_cmdline(console: str) -> str:
    return "console=hvc0" if console == "virtio" else "console=ttyAMA0 earlycon"


def full_cmdline(config: MachineConfig) -> str:
    """The user's -p, with a console= for the chosen console unless it names one."""
    user = (config.cmdline or "").strip()
    if "console=" in user:
        return user
    return f"{default_cmdline(config.console)} {user}".strip()


@dataclass
class Payload:
    """What goes into RAM, checked before any KVM object exists. The kernel is
    streamed from its file at load time rather than kept in memory (51 MB for
    Debian's Image)."""
    data: Optional[bytes]  # firmware bytes; None for a kernel (read from kernel_path)
    initrd: Optional[bytes]
    plan: layout.BootPlan
    firmware: bool
    kernel_path: Optional[str] = None
    kernel_size: int = 0

    LOAD_CHUNK = 4 << 20

    def load_into(self, mem, addr: int) -> None:
        if self.data is not None:
            mem.write(addr, self.data)
            return
        with open(self.kernel_path, "rb") as f:
            done = 0
            while done < self.kernel_size:
                chunk = f.read(min(self.LOAD_CHUNK, self.kernel_size - done))
                if not chunk:
                    raise UsageProblem(f"kernel {self.kernel_path} shrank while loading")
                mem.write(addr + done, chunk)
                done += len(chunk)


def check_options(config: MachineConfig) -> None:
    """The checks on the configuration's values alone (no files): raise
    UsageProblem with the reason. Also used on a snapshot's configuration."""
    if not 1 <= config.cpus <= layout.MAX_VCPUS:
        raise UsageProblem(f"--cpus {config.cpus}: pyvmm runs 1 to {layout.MAX_VCPUS} vCPUs")
    if config.console not in ("serial", "virtio"):
        raise UsageProblem(f"--console {config.console!r}: choose serial or virtio")
    if config.on_reboot not in ("restart", "exit"):
        raise UsageProblem(f"--on-reboot {config.on_reboot!r}: choose restart or exit")
    layout.check_ram(config.mem)
    if config.sve_max_vl is not None:
        parse_vl(config.sve_max_vl, "--sve-max-vl")
    if config.sme_max_vl is not None:
        parse_vl(config.sme_max_vl, "--sme-max-vl")
    if not config.sve and config.sve_max_vl is not None:
        raise UsageProblem("--sve-max-vl and --no-sve contradict each other")
    if virtio_count(config) > layout.VIRTIO_SLOTS:
        raise UsageProblem(f"at most {layout.VIRTIO_SLOTS} virtio devices")


def virtio_count(config: MachineConfig) -> int:
    return (len(config.disks) + (config.console == "virtio") + config.rng + len(config.nets)
            + (config.vsock is not None) + len(config.fss))


def check_devices(config: MachineConfig) -> None:
    """The --net/--vsock/--fs values against each other and the file system."""
    taps = [n.tap for n in config.nets]
    for t in set(taps):
        if taps.count(t) > 1:
            raise UsageProblem(f"--net tap={t} given twice: one virtio-net per tap")
    for n in config.nets:
        if tap.interface_exists(n.tap) and not tap.is_tap(n.tap):
            raise UsageProblem(f"--net tap={n.tap}: {n.tap} exists and is not a tap interface",
                               "name a tap (ip tuntap add NAME mode tap) or a free name for pyvmm to create")
    tags = [f.tag for f in config.fss]
    for t in set(tags):
        if tags.count(t) > 1:
            raise UsageProblem(f"--fs tag={t} given twice: tags must differ")
    for f in config.fss:
        if f.dir is not None and not os.path.isdir(f.dir):
            raise UsageProblem(f"--fs tag={f.tag},dir={f.dir}: " +
                               ("no such directory" if not os.path.exists(f.dir) else "not a directory"))


def prepare(config: MachineConfig) -> Payload:
    """Validate options and files; raise UsageProblem with the reason."""
    check_options(config)
    check_devices(config)
    if bool(config.kernel) == bool(config.firmware):
        raise UsageProblem("give exactly one of --kernel IMAGE and --firmware BIN")
    for d in config.disks:
        if not os.path.isfile(d.path):
            raise UsageProblem(f"--disk {d.path}: no such file" if not os.path.exists(d.path)
                               else f"--disk {d.path}: not a regular file")
        if not os.access(d.path, os.R_OK if d.readonly else os.R_OK | os.W_OK):
            raise UsageProblem(f"--disk {d.path}: permission denied"
                               + ("" if d.readonly else " (add ,ro for a read-only disk)"))
    initrd = None
    if config.initrd:
        initrd = image.read_file(config.initrd, "initrd")
        if not initrd:
            raise UsageProblem(f"initrd {config.initrd}: the file is empty")
    if config.firmware:
        data = image.read_file(config.firmware, "firmware")
        if not data:
            raise UsageProblem(f"firmware {config.firmware}: the file is empty")
        plan = layout.plan(config.mem, len(data), 0, len(initrd or b""), initrd is not None, what="firmware")
        return Payload(data, initrd, plan, True)
    head = image.read_file(config.kernel, "kernel", image.HEAD_BYTES)
    size = os.path.getsize(config.kernel)
    hdr = image.parse_header(head, f"kernel {config.kernel}", file_size=size)
    plan = layout.plan(config.mem, image.load_size(hdr, size), hdr.text_offset,
                       len(initrd or b""), initrd is not None)
    return Payload(None, initrd, plan, False, config.kernel, size)


class _KernelOwned:
    """A bus placeholder for a range KVM handles itself (the vGIC): it keeps
    devices from being placed there; accesses never reach userspace."""

    def read(self, offset, length):
        return bytes(length)

    def write(self, offset, data):
        pass


class ConsoleInput:
    """Reads host input and hands it to the current machine's console.
    In raw terminal mode, Ctrl-A x stops the guest and Ctrl-A Ctrl-A sends Ctrl-A."""

    ESCAPE = 0x01

    def __init__(self, fd: Optional[int], escape: bool = False):
        self.fd = fd
        self.escape = escape
        self.sink: Optional[Callable[[bytes], int]] = None
        self.on_escape: Optional[Callable[[], None]] = None
        self._stop = threading.Event()
        self._pending_escape = False
        self._thread = None

    def start(self) -> None:
        if self.fd is None:
            return
        self._thread = threading.Thread(target=self._loop, name="console-input", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                r, _, _ = select.select([self.fd], [], [], 0.2)
                if not r:
                    continue
                data = os.read(self.fd, 4096)
            except (OSError, ValueError):
                return
            if not data:
                return  # EOF: no more input
            if self.escape:
                data = self._filter(data)
            while data and not self._stop.is_set():
                sink = self.sink
                taken = sink(data) if sink else 0
                data = data[taken:]
                if data:
                    time.sleep(0.01)  # the guest is not reading: wait for room

    def _filter(self, data: bytes) -> bytes:
        out = bytearray()
        for b in data:
            if self._pending_escape:
                self._pending_escape = False
                if b in (ord("x"), ord("X")):
                    if self.on_escape:
                        self.on_escape()
                    continue
                if b == self.ESCAPE:
                    out.append(b)
                    continue
                out += bytes((self.ESCAPE, b))
            elif b == self.ESCAPE:
                self._pending_escape = True
            else:
                out.append(b)
        return bytes(out)

    def stop(self) -> None:
        self._stop.set()


class OutputBuffer:
    """Console output collected while a batch of guest writes is replayed
    (one coalesced-MMIO drain), then written at once: one write(2) per batch
    instead of one per byte."""

    def __init__(self, output: Callable[[bytes], None]):
        self._output = output
        self._buf = bytearray()
        self._lock = threading.Lock()
        self.batching = 0

    def write(self, data: bytes) -> None:
        if not self.batching:
            self._output(data)
            return
        with self._lock:
            self._buf += data

    def flush(self) -> None:
        with self._lock:
            if not self._buf:
                return
            data = bytes(self._buf)
            self._buf.clear()
        self._output(data)


class CoalescedRing:
    """The VM's coalesced-MMIO ring (virt/kvm/coalesced_mmio.c): KVM appends
    guest writes to registered zones here instead of exiting; pyvmm replays
    them on the bus, in order, before handling any other exit and from the
    main thread every few milliseconds (so output of an idle guest appears).
    The ring is one page at KVM_CAP_COALESCED_MMIO's page offset in a vCPU
    mapping; entries are consumed by advancing ``first`` (KVM writes ``last``)."""

    ENTRY = 24  # sizeof(struct kvm_coalesced_mmio)

    def __init__(self, vcpu_fd: int, page_offset: int, bus, out: Optional[OutputBuffer] = None):
        self.bus = bus
        self.out = out
        self.mm = mmap.mmap(vcpu_fd, mmap.PAGESIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE,
                            offset=page_offset * mmap.PAGESIZE)
        self.ring = ffi.from_buffer("struct kvm_coalesced_mmio_ring *", self.mm)
        self.max = (mmap.PAGESIZE - 8) // self.ENTRY  # KVM_COALESCED_MMIO_MAX
        self.lock = threading.Lock()
        self.entries = 0

    def pending(self) -> bool:
        ring = self.ring
        return ring is not None and ring.first != ring.last

    def drain(self) -> None:
        with self.lock:
            ring = self.ring
            if ring is None:
                return
            if self.out is not None:
                self.out.batching += 1
            try:
                self._drain(ring)
            finally:
                if self.out is not None:
                    self.out.batching -= 1
                    self.out.flush()

    def _drain(self, ring) -> None:
        first, last = ring.first, ring.last
        while first != last:
            if first >= self.max:
                raise GuestError(f"coalesced MMIO ring index {first} out of range")
            e = ring.coalesced_mmio[first]
            addr, data = e.phys_addr, ffi.buffer(e.data, min(e.len, 8))[:]
            first = (first + 1) % self.max
            # the entry is copied out before KVM may reuse its slot
            ring.first = first
            self.entries += 1
            self.bus.write(addr, data)

    def close(self) -> None:
        with self.lock:
            self.ring = None
        try:
            self.mm.close()
        except BufferError:
            pass


class Machine:
    def __init__(self, kvm, config: MachineConfig, payload: Payload, output: Callable[[bytes], None]):
        self.kvm = kvm
        self.config = config
        self.payload = payload
        self.output = output
        self.uart_out = OutputBuffer(output)
        self.vm = None
        self.mem = GuestMemory()
        self.bus = MmioBus()
        self.vcpus = []
        self.gic = None
        self.uart = None
        self.console = None
        self.virtio: List[VirtioMmio] = []
        self.disks: List[VirtioBlk] = []
        self.dtb = b""
        self.cmdline = full_cmdline(config)
        self._threads: List[threading.Thread] = []
        self._done = threading.Event()
        self._outcome_lock = threading.Lock()
        self._outcome: Optional[Outcome] = None
        self.exits: Counter = Counter()
        self.coalesced: Optional[CoalescedRing] = None
        self.vcpu_features: List[List[int]] = []  # INIT features per vCPU (without POWER_OFF)
        self.sme_bit: Optional[int] = None
        # Pausing (pause()/resume()): vCPU threads park outside KVM_RUN.
        self._pause_cv = threading.Condition()
        self._pause_req = False
        self._parked = 0
        # Guest counters (CNTVCT, CNTPCT) read when the vCPUs stopped and
        # written back on resume, so the guest never sees a pause (a long one
        # would trip its RCU stall detector and watchdogs). Off: the counters
        # run on while paused (pyvmm restore --clock keep).
        self.hide_pauses = True
        self._frozen_counters: Optional[List[int]] = None
        # Held by host-side input into devices (console) and by whoever saves
        # the machine, so a snapshot never sees a half-delivered input.
        self.io_lock = threading.RLock()
        # Virtio queue notifies and interrupts through KVM_IOEVENTFD/KVM_IRQFD
        # (eventfds False: MMIO exits and KVM_IRQ_LINE, on a KVM without
        # them); Python-emulated queues and the taps of vhost=off served by
        # the I/O thread.
        self.io: Optional[IoThread] = None
        self.eventfds = False
        self.notifiers: List[virtio_notify.Notifiers] = []
        self.owned: List = []  # backends holding host resources (closed by close())

    # -- building --------------------------------------------------------------
    def _irq(self, spi: int) -> Callable[[bool], None]:
        line = spi_irq_line(spi)
        vm = self.vm

        def raise_irq(level: bool) -> None:
            vm.irq_line(line, 1 if level else 0)
        return raise_irq

    def build(self) -> None:
        """A fresh machine ready to boot: VM, vCPUs, vGIC, devices, payload."""
        self.create_vm()
        self.create_vcpus()
        self.create_devices()
        self.load_payload()

    def create_vm(self) -> None:
        self.vm = self.kvm.create_vm()
        # vhost-user daemons (virtio-fs) map guest RAM themselves: a shared memfd
        self.mem.add(layout.RAM_BASE, self.config.mem, self.vm, shared=bool(self.config.fss))
        if self.kvm.check_extension(const("KVM_CAP_ARM_PSCI_0_2")) <= 0:
            raise HostUnsupported("this host's KVM does not implement PSCI 0.2, which pyvmm needs for SMP and power-off")

    def create_vcpus(self) -> None:
        c, kvm = self.config, self.kvm
        has_sve = kvm.check_extension(const("KVM_CAP_ARM_SVE")) > 0
        if c.sve_max_vl is not None and not has_sve:
            raise HostUnsupported("--sve-max-vl: this host's KVM offers no SVE to guests")
        use_sve = has_sve and c.sve
        sme_bit = None
        if c.sme_max_vl is not None:
            found = discover(kvm)  # the SME feature bit is probed (ABI page §2)
            if not found.present:
                raise HostUnsupported(f"--sme-max-vl: this host's KVM offers no SME to guests ({found.reason})",
                                      "see pyvmm caps and pyvmm abi-check; the project's SME kernel is "
                                      "built by ci/qemu-aarch64/kernel/build")
            sme_bit = found.bit
        self.sme_bit = sme_bit
        # The INIT features a snapshot records (configure_vcpu adds the same
        # SVE and SME bits itself); POWER_OFF is in the saved MP state instead.
        features = [const("KVM_ARM_VCPU_PSCI_0_2")]
        if use_sve:
            features.append(const("KVM_ARM_VCPU_SVE"))
        if sme_bit is not None:
            features.append(sme_bit)
        for i in range(c.cpus):
            vcpu = self.vm.create_vcpu(i)
            extra = [const("KVM_ARM_VCPU_POWER_OFF")] if i > 0 else []
            if use_sve or sme_bit is not None:
                # INIT, SVE_VLS/SME_VLS cuts, one FINALIZE(KVM_ARM_VCPU_VEC) (pyvmm/sme.py)
                configure_vcpu(vcpu, sme_bit, c.sve_max_vl if use_sve else None, c.sme_max_vl,
                               sve=use_sve, extra_features=extra,
                               sve_label="--sve-max-vl", sme_label="--sme-max-vl")
            else:
                vcpu.arm_vcpu_init([*features, *extra])
            self.add_vcpu(vcpu, features)

    def add_vcpu(self, vcpu, features: List[int]) -> None:
        """Record a vCPU created and initialised by the caller (also used by
        snapshot restore, which initialises from the saved state)."""
        self.vcpus.append(vcpu)
        self.vcpu_features.append(list(features))

    def create_devices(self) -> None:
        """The vGIC (after every vCPU exists), the UART and the virtio devices."""
        c = self.config
        self.gic = VgicV3(self.vm, len(self.vcpus))
        self.gic.init()
        self.bus.register(layout.GICD_BASE, layout.GICD_SIZE, _KernelOwned(), "vGICv3 distributor")
        self.bus.register(layout.GICR_BASE, layout.gicr_size(len(self.vcpus)), _KernelOwned(),
                          "vGICv3 redistributors")

        self.uart = Pl011(layout.UART_BASE, layout.UART_SPI, self._irq(layout.UART_SPI), self.uart_out.write)
        self.bus.register(layout.UART_BASE, PL011_SIZE, self.uart, "pl011")
        self._coalesce_uart_output()
        self.io = IoThread(self.io_lock, self._io_failed)
        self.eventfds = virtio_notify.supported(self.kvm)
        slot = 0
        if c.console == "virtio":
            self.console = VirtioConsole(self.output)
            self._add_virtio(slot, self.console, "virtio-console")
            slot += 1
        for d in c.disks:
            blk = VirtioBlk(d.path, d.readonly)
            self.disks.append(blk)
            self._add_virtio(slot, blk, f"virtio-blk {d.path}")
            slot += 1
        for k, n in enumerate(c.nets):
            if n.mac is None:  # chosen once: a reboot or a snapshot keeps it
                c.nets[k] = n = dataclasses.replace(n, mac=format_mac(random_mac()))
            if n.vhost:
                net = VirtioNet.open(n.tap, n.mac)
            else:
                net = VirtioNetPython.open(n.tap, n.mac)
                net.io = self.io
            self._add_virtio(slot, self._own(net), f"virtio-net tap={n.tap}")
            slot += 1
        if c.vsock is not None:
            self._add_virtio(slot, self._own(VirtioVsock.open(c.vsock.cid)), f"virtio-vsock cid={c.vsock.cid}")
            slot += 1
        for f in c.fss:
            fs = self._own(VirtioFs.open(f.tag, f.dir, f.socket))
            self._add_virtio(slot, fs, f"virtio-fs tag={f.tag}")
            self.io.watch_hangup(fs.plane.fd, lambda fs=fs: self._daemon_gone(fs))
            slot += 1
        if c.rng:
            self._add_virtio(slot, VirtioRng(), "virtio-rng")
            slot += 1

    def _own(self, backend):
        """A backend with host resources (fds, taps, daemons), closed with the machine."""
        self.owned.append(backend)
        return backend

    def _coalesce_uart_output(self) -> None:
        """Let the UART's data register take writes without exits (the console
        costs one exit per character otherwise: Linux's PL011 driver writes DR
        once per byte)."""
        page = self.kvm.check_extension(const("KVM_CAP_COALESCED_MMIO"))
        if page <= 0:
            return
        zone = ffi.new("struct kvm_coalesced_mmio_zone *")
        zone.addr, zone.size = layout.UART_BASE + PL011_DR, 4
        self.vm.ioctl("KVM_REGISTER_COALESCED_MMIO", zone)
        self.coalesced = CoalescedRing(self.vcpus[0].fd, page, self.bus, self.uart_out)

    def _add_virtio(self, slot: int, backend, name: str) -> None:
        base, spi = layout.virtio_slot(slot)
        if not self.eventfds:
            if backend.kernel_queues:
                raise HostUnsupported(f"{name} needs KVM_IOEVENTFD, KVM_IRQFD and irqfd resampling, "
                                      "which this host's KVM does not offer")
            t = VirtioMmio(base, spi, self.mem, self._irq(spi), backend)
        else:
            n = virtio_notify.Notifiers(backend.num_queues)
            self.notifiers.append(n)
            t = VirtioMmio(base, spi, self.mem, n.raise_irq, backend)
            n.register(self.vm, base, spi)
            if backend.kernel_queues:
                backend.attach_eventfds(n.kicks, n.call)
                n.serve_resample(self.io, t)
            else:
                n.serve(self.io, t)
        self.bus.register(base, VIRTIO_SIZE, t, name)
        self.virtio.append(t)

    def _daemon_gone(self, fs) -> None:
        why = ""
        if fs.daemon is not None:
            time.sleep(0.1)  # let it finish dying, for its status and last words
            status, words = fs.daemon.exited(), fs.daemon.last_words()
            why = f" (virtiofsd {'exited with status ' + str(status) if status is not None else 'closed it'}" \
                  f"{': ' + words if words else ''})"
        self.finish(ExitStatus.ERROR, f"virtio-fs tag={fs.tag}: the vhost-user daemon closed its socket{why}")

    def _io_failed(self, e: BaseException) -> None:
        status = ExitStatus.USAGE if isinstance(e, UsageProblem) else ExitStatus.ERROR
        what = str(e) if isinstance(e, PyvmmError) else f"internal error: {type(e).__name__}: {e}"
        self.finish(status, f"virtio I/O thread: {what}")

    def device_nodes(self) -> List[fdt.Node]:
        return [self.uart.dt_node()] + [t.dt_node() for t in self.virtio]

    def load_payload(self) -> None:
        """Kernel (or firmware), initrd and device tree into RAM; vCPU 0 at the entry."""
        p = self.payload.plan
        self.payload.load_into(self.mem, p.kernel_addr)
        initrd_range = None
        if self.payload.initrd is not None:
            self.mem.write(p.initrd_addr, self.payload.initrd)
            initrd_range = (p.initrd_addr, p.initrd_addr + len(self.payload.initrd))
        self.dtb = fdt.build(ram_size=self.config.mem, mpidrs=[mpidr_of(v) for v in self.vcpus],
                             gic=self.gic.dt_node(), devices=self.device_nodes(), bootargs=self.cmdline,
                             initrd=initrd_range,
                             stdout_path=self.uart.dt_path if self.config.console == "serial" else None)
        self.mem.write(p.dtb_addr, self.dtb)
        boot = self.vcpus[0]
        boot.set_reg(regs.core("PC"), p.entry)
        boot.set_reg(regs.core("X0"), p.dtb_addr)
        for n in (1, 2, 3):
            boot.set_reg(regs.core(f"X{n}"), 0)

    # -- running -----------------------------------------------------------------
    def console_sink(self) -> Callable[[bytes], int]:
        """Where host console input goes. Nothing is taken while the machine
        is paused (a snapshot must not see input half delivered)."""
        receive = self.console.receive if self.console is not None else self.uart.receive

        def sink(data: bytes) -> int:
            with self.io_lock:
                if self._pause_req:
                    return 0
                return receive(data)
        return sink

    # -- pausing -----------------------------------------------------------------
    @property
    def paused(self) -> bool:
        return self._pause_req

    def request_pause(self) -> None:
        """Ask every vCPU thread to park outside KVM_RUN (before run(): they
        park at once, so a restored machine can start paused)."""
        with self._pause_cv:
            self._pause_req = True
            # immediate_exit is set under the lock: a thread leaving _park
            # clears its own flag under the same lock, so a new pause can
            # never be lost.
            self._kick()

    def pause(self, timeout: float = 30.0) -> None:
        """Stop every vCPU with its state consistent: KVM_RUN with
        immediate_exit completes a pending MMIO access and returns EINTR, so
        each thread parks with the PC past the instruction it was on. Then
        drain the coalesced ring, so every guest write reached its device."""
        self.request_pause()
        deadline = time.monotonic() + timeout
        with self._pause_cv:
            while self._parked < len(self._threads) and not self._done.is_set():
                if time.monotonic() > deadline:
                    raise GuestError(f"the vCPUs did not stop within {timeout:.0f} s "
                                     f"({self._parked} of {len(self._threads)} parked)")
                self._pause_cv.wait(0.1)
                if self._parked < len(self._threads):
                    self._signal_threads()
        if self._done.is_set():
            raise GuestError("the guest stopped while being paused")
        if self.coalesced is not None:
            self.coalesced.drain()
        self.freeze_clock()

    def freeze_clock(self) -> None:
        """Remember the guest's counters (vCPUs stopped) for :meth:`resume`."""
        if self.hide_pauses and self._frozen_counters is None and self.vcpus:
            self._frozen_counters = [self.vcpus[0].get_reg(r) for r in _COUNTERS]

    def resume(self) -> None:
        with self._pause_cv:
            frozen, self._frozen_counters = self._frozen_counters, None
            if frozen is not None and self._pause_req:
                # The counter offset is VM-wide in KVM; every vCPU is written
                # so a kernel with per-vCPU offsets agrees too.
                for v in self.vcpus:
                    for reg, value in zip(_COUNTERS, frozen):
                        v.set_reg(reg, value)
            self._pause_req = False
            self._pause_cv.notify_all()

    def _park(self, vcpu) -> None:
        with self._pause_cv:
            self._parked += 1
            self._pause_cv.notify_all()
            while self._pause_req and not self._done.is_set():
                self._pause_cv.wait(0.5)
            self._parked -= 1
            if not self._done.is_set():
                vcpu.set_immediate_exit(False)

    def finish(self, status: ExitStatus, reason: str) -> None:
        """Record the first outcome and stop every vCPU. Safe from any thread."""
        with self._outcome_lock:
            if self._outcome is None:
                self._outcome = Outcome(status, reason)
        self._done.set()
        with self._pause_cv:
            self._pause_cv.notify_all()
        self._kick()

    def _kick(self) -> None:
        for v in self.vcpus:
            if v.run_struct is not None:
                v.set_immediate_exit(True)
        self._signal_threads()

    def _signal_threads(self) -> None:
        me = threading.get_ident()
        for t in self._threads:
            if t.ident is not None and t.ident != me and t.is_alive():
                try:
                    signal.pthread_kill(t.ident, signal.SIGUSR1)
                except (ProcessLookupError, OSError):
                    pass

    def _vcpu_loop(self, vcpu) -> None:
        counts = Counter()
        bus_read, bus_write = self.bus.read, self.bus.write
        # The hot path: KVM_RUN and MMIO completion without the per-call
        # lookups of Vcpu.run() / exits.decode() (same ioctl, same kvm_run
        # fields; every other exit still goes through exits.decode).
        run = vcpu.run_struct
        mmio = run.mmio
        ioctl = libc().ioctl
        fd = vcpu.fd
        req = ffi.cast("unsigned long", request("KVM_RUN").number)
        zero = ffi.cast("unsigned long", 0)
        buffer, memmove = ffi.buffer, ffi.memmove
        EXIT_MMIO = const("KVM_EXIT_MMIO")
        EXIT_INTR = const("KVM_EXIT_INTR")
        SystemEvent = exits.SystemEventExit
        ring = self.coalesced
        n_mmio = 0
        try:
            while not self._done.is_set():
                if ioctl(fd, req, zero) < 0:
                    err = ffi.errno
                    if err == errno.EINTR:
                        counts["intr"] += 1
                        if self._pause_req:
                            self._park(vcpu)
                        continue
                    raise KvmError(err, "KVM_RUN", vcpu.target, None, explain("KVM_RUN", err, None))
                if ring is not None and ring.pending():
                    ring.drain()  # earlier writes first
                if run.exit_reason == EXIT_MMIO:
                    n_mmio += 1
                    n = mmio.len
                    if mmio.is_write:
                        bus_write(mmio.phys_addr, buffer(mmio.data, n)[:])
                    else:
                        memmove(mmio.data, bus_read(mmio.phys_addr, n), n)
                    continue
                if run.exit_reason == EXIT_INTR:
                    counts["intr"] += 1
                    if self._pause_req:
                        self._park(vcpu)
                    continue
                ex = exits.decode(run)
                if type(ex) is SystemEvent:
                    counts["system_event"] += 1
                    self._system_event(vcpu, ex)
                else:
                    counts[type(ex).__name__] += 1
                    self.finish(ExitStatus.CRASH, f"vcpu{vcpu.index}: {_describe(ex)}")
        except KvmError as e:
            if e.ioctl == "KVM_RUN" and e.errno in (errno.ENOSYS, errno.EFAULT, errno.ENOEXEC):
                # KVM could not handle what the guest did (e.g. ENOSYS: a data abort
                # outside RAM and devices without a valid syndrome): the guest is stuck.
                self.finish(ExitStatus.CRASH, f"vcpu{vcpu.index}: the guest did something KVM cannot "
                                              f"continue from ({e.message})")
            else:
                self.finish(ExitStatus.ERROR, f"vcpu{vcpu.index}: {e}")
        except PyvmmError as e:
            self.finish(ExitStatus.USAGE if isinstance(e, UsageProblem) else ExitStatus.ERROR,
                        f"vcpu{vcpu.index}: {e}")
        except Exception as e:  # a bug in pyvmm: stop the guest, report it
            self.finish(ExitStatus.ERROR, f"vcpu{vcpu.index}: internal error: {type(e).__name__}: {e}")
        finally:
            counts["mmio"] += n_mmio
            with self._outcome_lock:
                self.exits.update(counts)

    def _system_event(self, vcpu, ex) -> None:
        kind = ex.type
        if kind == const("KVM_SYSTEM_EVENT_SHUTDOWN"):
            self.finish(ExitStatus.POWEROFF, "the guest powered off")
        elif kind == const("KVM_SYSTEM_EVENT_RESET"):
            self.finish(ExitStatus.RESET, "the guest asked for a reset")
        elif kind == const("KVM_SYSTEM_EVENT_CRASH"):
            self.finish(ExitStatus.CRASH, "the guest crashed (KVM crash event)")
        else:
            # WAKEUP / SUSPEND: only with caps pyvmm does not enable; resume.
            pass

    def run(self, on_signal_stop: Optional[Callable[[], Optional[Outcome]]] = None) -> Outcome:
        """Run until the guest powers off, resets, crashes or finish() is called."""
        t0 = time.monotonic()
        for v in self.vcpus:
            t = threading.Thread(target=self._vcpu_loop, args=(v,), name=f"vcpu{v.index}", daemon=True)
            self._threads.append(t)
        for t in self._threads:
            t.start()
        if self.io is not None:
            self.io.start()
        ring = self.coalesced
        while not self._done.wait(0.02 if ring is not None else 0.25):
            if ring is not None and ring.pending():
                ring.drain()
        self._kick()
        for t in self._threads:
            while t.is_alive():
                t.join(0.2)
                if t.is_alive():
                    self._kick()
        if self.io is not None:
            self.io.stop()
            self.exits["io_thread"] = self.io.wakeups
        if ring is not None:
            ring.drain()
            self.exits["coalesced"] = ring.entries
        out = self._outcome
        out.exits = self.exits
        out.seconds = time.monotonic() - t0
        out.console_bytes = self.uart.tx_bytes + (self.console.tx_bytes if self.console else 0)
        return out

    def close(self) -> None:
        if self.coalesced is not None:
            self.coalesced.close()
        if self.io is not None:
            self.io.close()
        for b in self.owned:
            b.close()
        for n in self.notifiers:
            n.close()
        for d in self.disks:
            d.close()
        if self.gic is not None:
            self.gic.close()
        if self.vm is not None:
            self.vm.close()
        self.mem.close()


_COUNTERS = (regs.sysreg_named("CNTVCT_EL0"), regs.sysreg_named("CNTPCT_EL0"))


def _describe(ex) -> str:
    if isinstance(ex, exits.FailEntryExit):
        return f"KVM could not enter the guest (FAIL_ENTRY, reason {ex.reason:#x})"
    if isinstance(ex, exits.InternalErrorExit):
        return f"KVM internal error (suberror {ex.suberror})"
    if isinstance(ex, exits.NisvExit):
        return (f"the guest accessed {ex.fault_ipa:#x} in a way KVM cannot emulate "
                f"(data abort without syndrome, ESR ISS {ex.esr_iss:#x}); it is not RAM or an emulated device")
    if isinstance(ex, exits.OtherExit):
        return f"unexpected exit {ex.name or ex.reason}"
    return repr(ex)


def _noop(signum, frame):
    pass


def run(config: MachineConfig, output: Callable[[bytes], None], input_fd: Optional[int] = None,
        escape: bool = False, on_ready: Optional[Callable[[Machine], None]] = None,
        first_build: Optional[Callable[[Machine], None]] = None, start_paused: bool = False,
        kvm=None) -> Outcome:
    """Boot the guest; restart it on reset when ``on_reboot`` is "restart".
    Must be called from the main thread (it installs signal handlers).

    ``first_build(machine)`` builds the first machine instead of
    :meth:`Machine.build` (snapshot restore); a later reset boots the kernel
    of ``config`` afresh, if its files are still there. ``start_paused``:
    the first machine's vCPUs wait for :meth:`Machine.resume`.
    ``on_ready(machine)`` is called for each machine before it runs."""
    from .kvm import open_kvm

    payload = prepare(config) if first_build is None else None
    own_kvm = kvm is None
    if own_kvm:
        kvm = open_kvm(config.kvm_path)
    console_in = ConsoleInput(input_fd, escape)
    current: List[Optional[Machine]] = [None]
    stop_request: List[Optional[tuple]] = [None]

    def stop(status, reason):
        stop_request[0] = (status, reason)
        m = current[0]
        if m is not None:
            m.finish(status, reason)

    handlers = {signal.SIGUSR1: _noop,
                signal.SIGINT: lambda s, f: stop(ExitStatus.INTERRUPTED, "stopped by SIGINT"),
                signal.SIGTERM: lambda s, f: stop(ExitStatus.TERMINATED, "stopped by SIGTERM")}
    old = {s: signal.signal(s, h) for s, h in handlers.items()}
    console_in.on_escape = lambda: stop(ExitStatus.INTERRUPTED, "stopped from the console (Ctrl-A x)")
    resets = 0
    try:
        console_in.start()
        while True:
            m = Machine(kvm, config, payload, output)
            try:
                t_build = time.monotonic()
                if config.trace_mmio:
                    m.bus.trace = Counter()
                if first_build is not None and resets == 0:
                    first_build(m)
                    if start_paused:
                        m.request_pause()
                        m.freeze_clock()  # no vCPU has run: its counters are the restored ones
                else:
                    m.build()
                t_build = time.monotonic() - t_build
                if config.dump_dtb and resets == 0 and m.dtb:
                    _write_file(config.dump_dtb, m.dtb)
                current[0] = m
                console_in.sink = m.console_sink()
                if on_ready:
                    on_ready(m)
                if stop_request[0] is not None:
                    m.finish(*stop_request[0])
                outcome = m.run()
            finally:
                console_in.sink = None
                current[0] = None
                m.close()
            if stop_request[0] is not None and outcome.status == ExitStatus.RESET:
                # stopped while the guest was resetting: the stop is the answer
                outcome.status, outcome.reason = stop_request[0]
            elif outcome.status == ExitStatus.RESET and config.on_reboot == "restart":
                try:
                    if payload is None:  # the first machine came from a snapshot
                        payload = prepare(config)
                    resets += 1
                    continue
                except UsageProblem as e:
                    outcome.reason = f"the guest asked for a reset, and its kernel cannot be booted again ({e})"
            outcome.resets = resets
            outcome.build_seconds = t_build
            outcome.mmio_trace = m.bus.trace
            return outcome
    finally:
        console_in.stop()
        for s, h in old.items():
            signal.signal(s, h)
        if own_kvm:
            kvm.close()


def _write_file(path: str, data: bytes) -> None:
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError as e:
        raise UsageProblem(f"--dump-dtb {path}: {e.strerror}") from None

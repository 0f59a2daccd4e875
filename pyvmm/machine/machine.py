"""The machine: builds the VM (RAM, vCPUs, vGICv3, devices, payload), runs one
thread per vCPU, and pauses, resumes and stops them (a value comes out: this
module prints nothing and never exits).

Boot follows Documentation/arch/arm64/booting.rst: vCPU 0 starts at the
kernel entry with x0 = DTB address, x1-x3 = 0, MMU off, EL1h, DAIF masked
(KVM's reset state). Secondaries start powered off (KVM_ARM_VCPU_POWER_OFF);
PSCI 0.2 (KVM_ARM_VCPU_PSCI_0_2) is handled inside KVM, which exits to us only
for SYSTEM_OFF / SYSTEM_RESET (KVM_EXIT_SYSTEM_EVENT).

Stopping: set ``immediate_exit`` in every vCPU's kvm_run, then send each vCPU
thread the kick signal (SIGUSR1, whose no-op handler :meth:`Machine.run`
makes sure of from whatever thread it runs in: :mod:`.kick`), so KVM_RUN
returns EINTR wherever it is.
"""
from __future__ import annotations

from .. import _threads
import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time; type checkers read True)
if TYPE_CHECKING:
    from typing import Callable, Dict, List, Optional, Tuple, TypeVar

    from .exit_status import ExitStatus

    import signal
else:
    import _signal as signal  # signal's C core: the same calls with int numbers, without enum (start-up time)

from .._record import replace
from ..arm64 import regs
from .._ffi import const
from ..boot import fdt, layout
from ..devices.bus import MmioBus
from ..devices.io_thread import IoThread, bound
from ..devices.pl011 import DR as PL011_DR, SIZE as PL011_SIZE, Pl011
from ..devices.virtio_rng import VirtioRng
from ..devices.virtio_mmio import SIZE as VIRTIO_SIZE, TRIGGER_EDGE, VirtioBackend, VirtioMmio
from ..devices import virtio_regpage
from ..errors import GuestError, HostUnsupported, PyvmmError, UsageProblem
from ..memory import GuestMemory
from .. import guest_features
from ..sme import configure_vcpu, probe_on_vcpu
from ..vcpu import mpidr_of
from .coalesced import CoalescedRing
from .config import MachineConfig, Outcome, Payload, counter, full_cmdline
from .console import OutputBuffer
from .gic import VgicV3, spi_irq_line
from .kick import KICK_SIGNAL, ensure_handler
from .vcpu_loop import run_vcpu
from . import virtio_notify

if TYPE_CHECKING:
    from ..devices.virtio_blk import VirtioBlk
    from ..devices.virtio_console import VirtioConsole
    from ..devices.virtio_fs import VirtioFs
    from ..devices.virtio_pci import VirtioPci
    from ..net.link_watch import LinkWatch
    from .pci_devices import PciDevices
    from ..vhost.virtiofsd import Virtiofsd
    from ..vcpu import Vcpu
    from ..vm import Vm

if TYPE_CHECKING:
    T = TypeVar("T")
    B = TypeVar("B", bound=VirtioBackend)


def built(part: Optional[T], what: str) -> T:
    """``part`` of a machine that building creates (:meth:`Machine.build`, or
    a snapshot restore): UsageProblem while it is not there yet."""
    if part is None:
        raise UsageProblem(f"the machine has no {what} yet: build it first")
    return part


class _KernelOwned:
    """A bus placeholder for a range KVM handles itself (the vGIC): it keeps
    devices from being placed there; accesses never reach userspace."""

    def read(self, offset, length):
        return bytes(length)

    def write(self, offset, data):
        pass


class Machine:
    """One VM as ``pyvmm run`` builds it (RAM, vCPUs, vGICv3, PL011,
    virtio devices, the payload) and its vCPU threads. ``payload`` is None
    for a machine a snapshot restore builds. The library's handle on one is
    :class:`pyvmm.api.VirtualMachine`."""

    def __init__(self, kvm, config: MachineConfig, payload: Optional[Payload], output: Callable[[bytes], None]):
        self.kvm = kvm
        self.config = config
        self.payload = payload
        self.output = output
        self.uart_out = OutputBuffer(output)
        self.vm: Optional[Vm] = None
        self.mem = GuestMemory()
        self.bus = MmioBus()
        self.vcpus: List[Vcpu] = []
        self.gic: Optional[VgicV3] = None
        self.uart: Optional[Pl011] = None
        self.console: Optional[VirtioConsole] = None
        self.virtio: List[VirtioMmio] = []
        self.disks: List[VirtioBlk] = []
        self.dtb = b""
        self.cmdline = full_cmdline(config)
        self._threads: List[_threads.Thread] = []
        self.done = _threads.Event()
        self._outcome_lock = _threads.Lock()
        self._outcome: Optional[Outcome] = None
        self.exits: Dict[str, int] = {}  # by kind; a Counter in the Outcome (collections loads after the run)
        # CLOCK_MONOTONIC ns when a vCPU first entered KVM_RUN (start-up benchmark, bench/startup.py)
        self.first_run_ns: Optional[int] = None
        # Set by a vCPU thread about to enter KVM_RUN for the first time: run() starts the I/O
        # and console threads after that (start-up time)
        self.entered = _threads.Event()
        self.coalesced: Optional[CoalescedRing] = None
        self.vcpu_features: List[List[int]] = []  # INIT features per vCPU (without POWER_OFF)
        self.sme_bit: Optional[int] = None
        self.pmu = False  # the vCPUs have a PMUv3 (build: chosen; restore: their saved features)
        # Pausing (pause()/resume()): vCPU threads park outside KVM_RUN.
        self._pause_cv = _threads.Condition()
        self._pause_req = False
        self._parked = 0
        # Held by pause() and resume() and, from its pause to its resume, by the thread that
        # replaces the mapped kernel and initrd files (_replace_mapped_files): a pause or resume
        # asked for meanwhile waits for it, so it never resumes a guest someone else paused.
        self._hold_lock = _threads.RLock()
        self._copier: Optional[_threads.Thread] = None
        self._stop_copy = False
        self.files_copied: Optional[Tuple[int, float]] = None  # bytes, seconds paused for them
        # Guest counters (CNTVCT, CNTPCT) read when the vCPUs stopped and
        # written back on resume, so the guest never sees a pause (a long one
        # would trip its RCU stall detector and watchdogs). Off: the counters
        # run on while paused (pyvmm restore --clock keep).
        self.hide_pauses = True
        self._frozen_counters: Optional[List[int]] = None
        # A live migration's destination on this host attaches to the taps
        # the source still holds (pyvmm/migration/taps.py); otherwise a tap
        # another process uses is refused.
        self.share_taps = False
        # Held by host-side input into devices (console) and by whoever saves
        # the machine, so a snapshot never sees a half-delivered input.
        self.io_lock = _threads.RLock()
        # Virtio queue notifies and interrupts through KVM_IOEVENTFD/KVM_IRQFD
        # (eventfds False: MMIO exits and KVM_IRQ_LINE, on a KVM without
        # them); Python-emulated queues and the taps of vhost=off served by
        # the I/O thread.
        self.io: Optional[IoThread] = None
        self.eventfds = False
        # The virtio interrupts' trigger type: edge (what this pyvmm builds),
        # or level for a machine restored from a snapshot taken before edge
        # (its guest configured the SPIs as level; set before create_devices).
        self.virtio_trigger = TRIGGER_EDGE
        self.notifiers: List[virtio_notify.Notifiers] = []
        self.owned: List = []  # backends holding host resources (closed by close())
        # The taps' interfaces: one deleted on the host mid-run stops the guest.
        self.links: Optional[LinkWatch] = None
        # virtiofsd daemons spawn_daemons() started, by tag, until create_devices hands them to their device
        self._daemons: Dict[str, Virtiofsd] = {}
        self._initrd_range: Optional[Tuple[int, int]] = None  # where load_images put the initrd
        # The read-only memory slot the guest reads virtio-mmio registers from
        # without exits (pyvmm/devices/virtio_regpage.py), or why there is none.
        self.regpages: Optional[virtio_regpage.RegPageSet] = None
        self.regpage_off: Optional[str] = "no virtio device built yet"
        # The PCI side (ITS, host bridge, virtio-pci functions), built for a
        # device given transport=pci (pyvmm/machine/pci_devices.py); whatever
        # goes over every virtio transport (snapshots, vhost planes, taps)
        # takes :attr:`transports`
        self.pci: Optional[PciDevices] = None
        self.pci_virtio: List[VirtioPci] = []

    # -- building --------------------------------------------------------------
    def _irq(self, spi: int) -> Callable[[bool], None]:
        line = spi_irq_line(spi)
        vm = built(self.vm, "VM")

        def raise_irq(level: bool) -> None:
            vm.irq_line(line, 1 if level else 0)
        return raise_irq

    def _edge_irq(self, spi: int) -> Callable[[bool], None]:
        """An edge-triggered interrupt through KVM_IRQ_LINE: a raise is a
        pulse, as an irqfd without resampling injects it."""
        line = self._irq(spi)

        def raise_irq(level: bool) -> None:
            if level:
                line(True)
                line(False)
        return raise_irq

    def build(self) -> None:
        """A fresh machine ready to boot: VM, vCPUs, vGIC, devices, payload.
        The virtiofsd daemons start first and the kernel is loaded while they
        come up (start-up time: virtiofsd takes a while to accept)."""
        self.spawn_daemons()
        self.create_vm()
        self.create_vcpus()
        self.load_images()
        self.create_devices()
        self.load_payload()

    def spawn_daemons(self) -> None:
        """Start a virtiofsd for each --fs dir=DIR, not waiting for them:
        create_devices connects to them. Stopped by close() until a device owns one."""
        for f in self.config.fss:
            if f.dir is not None and f.tag not in self._daemons:
                from ..vhost.virtiofsd import Virtiofsd

                self._daemons[f.tag] = Virtiofsd(f.tag, f.dir).spawn()

    def create_vm(self) -> None:
        self.vm = self.kvm.create_vm()
        # vhost-user daemons (virtio-fs) map guest RAM themselves: shared memory (pyvmm/memory.py)
        self.mem.add(layout.RAM_BASE, self.config.mem, self.vm, shared=bool(self.config.fss))
        if self.kvm.check_extension(const("KVM_CAP_ARM_PSCI_0_2")) <= 0:
            raise HostUnsupported("this host's KVM does not implement PSCI 0.2, which pyvmm needs for SMP and power-off")

    def create_vcpus(self) -> None:
        c, kvm = self.config, self.kvm
        first, probed_bit = self._probe_sme_on_first_vcpu()
        # SME left out unprobed when the guest gets none (--no-sme): no scratch VMs
        chosen = guest_features.choose(c, guest_features.offered(kvm, probe_sme=c.sme or c.sme_max_vl is not None))
        self.sme_bit = chosen.sme_bit
        self.pmu = chosen.pmu
        # The INIT features a snapshot records (configure_vcpu adds the SVE
        # and SME bits itself); POWER_OFF is in the saved MP state instead.
        features = chosen.init_features()
        for i in range(c.cpus):
            vcpu = first if i == 0 and first is not None else built(self.vm, "VM").create_vcpu(i)
            extra = chosen.extra_features() + ([const("KVM_ARM_VCPU_POWER_OFF")] if i > 0 else [])
            if chosen.sve or chosen.sme_bit is not None:
                # INIT, SVE_VLS/SME_VLS cuts, one FINALIZE(KVM_ARM_VCPU_VEC) (pyvmm/sme.py)
                configure_vcpu(vcpu, chosen.sme_bit, c.sve_max_vl if chosen.sve else None, c.sme_max_vl,
                               sve=chosen.sve, extra_features=extra,
                               sve_label="--sve-max-vl", sme_label="--sme-max-vl",
                               initialised=i == 0 and probed_bit is not None)
            else:
                vcpu.arm_vcpu_init([const("KVM_ARM_VCPU_PSCI_0_2"), *extra])
            self.add_vcpu(vcpu, features)

    def _probe_sme_on_first_vcpu(self) -> Tuple[Optional[Vcpu], Optional[int]]:
        """For a guest that gets SME wherever KVM offers it (no --sme-max-vl, which is
        refused with the full probe's reasons): create vCPU 0 and let SME discovery's
        probe be its INIT (pyvmm/sme.py, probe_on_vcpu; ABI page §2) instead of scratch
        VMs. Returns (vCPU 0 or None, the SME bit it was initialised with or None: not
        initialised). An INIT that fixed the VM's features with a bit that is not SME
        costs a new VM (and the scratch VMs of the full probe)."""
        c, kvm = self.config, self.kvm
        if not c.sme or c.sme_max_vl is not None:
            return None, None
        base = guest_features.choose(c, guest_features.offered(kvm, probe_sme=False))
        first = built(self.vm, "VM").create_vcpu(0)
        found, spoiled = probe_on_vcpu(kvm, first, base.init_features())
        if spoiled:
            built(self.vm, "VM").close()
            self.vm = None
            self.mem.close()
            self.mem = GuestMemory()
            self.create_vm()
            return None, None
        return first, found.bit if found is not None else None

    def add_vcpu(self, vcpu, features: List[int]) -> None:
        """Record a vCPU created and initialised by the caller (also used by
        snapshot restore, which initialises from the saved state)."""
        self.vcpus.append(vcpu)
        self.vcpu_features.append(list(features))

    def create_devices(self) -> None:
        """The vGIC (after every vCPU exists), the UART and the virtio devices."""
        c = self.config
        self.gic = VgicV3(built(self.vm, "VM"), len(self.vcpus))
        self.gic.init()
        if self.pmu:  # after the vGIC, before any vCPU runs (also on restore)
            for v in self.vcpus:
                guest_features.init_pmu(v)
        self.bus.register(layout.GICD_BASE, layout.GICD_SIZE, _KernelOwned(), "vGICv3 distributor")
        self.bus.register(layout.GICR_BASE, layout.gicr_size(len(self.vcpus)), _KernelOwned(),
                          "vGICv3 redistributors")

        self.uart = Pl011(layout.UART_BASE, layout.UART_SPI, self._irq(layout.UART_SPI), self.uart_out.write)
        self.bus.register(layout.UART_BASE, PL011_SIZE, self.uart, "pl011")
        self._coalesce_uart_output()
        self.io = IoThread(self.io_lock, self._io_failed)
        self.eventfds = virtio_notify.supported(self.kvm, self.virtio_trigger == TRIGGER_EDGE)
        self.regpages, self.regpage_off = virtio_regpage.open_set(
            self.kvm, built(self.vm, "VM"), layout.VIRTIO_BASE, layout.VIRTIO_SLOTS * layout.VIRTIO_SLOT_SIZE)
        slot = 0
        # virtio-console and virtio-blk load only when configured (start-up time)
        if c.console == "virtio":
            from ..devices.virtio_console import VirtioConsole

            self.console = VirtioConsole(self.output)
            self._add_virtio(slot, self.console, "virtio-console")
            slot += 1
        for d in c.disks:
            from ..devices.virtio_blk import VirtioBlk

            blk = VirtioBlk(d.path, d.readonly)
            self.disks.append(blk)
            self._add_virtio(slot, blk, f"virtio-blk {d.path}")
            slot += 1
        # The network, vsock and virtio-fs back ends are loaded only for a
        # machine that has them (start-up time: tests/host/test_startup.py).
        for k, n in enumerate(c.nets):
            from ..devices.virtio_net import VirtioNet, VirtioNetPython, format_mac, random_mac

            if n.mac is None:  # chosen once: a reboot or a snapshot keeps it
                c.nets[k] = n = replace(n, mac=format_mac(random_mac()))
            net: VirtioBackend
            if n.vhost:
                net = VirtioNet.open(n.tap, n.mac, shared=self.share_taps)
            else:
                net = VirtioNetPython.open(n.tap, n.mac, self.io, shared=self.share_taps)
            if n.transport == "pci":
                self._add_virtio_pci(self._own(net), f"virtio-net-pci tap={n.tap}")
            else:
                self._add_virtio(slot, self._own(net), f"virtio-net tap={n.tap}")
                slot += 1
            self._watch_link(n.tap)
        if c.vsock is not None:
            from ..devices.virtio_vsock import VirtioVsock

            self._add_virtio(slot, self._own(VirtioVsock.open(c.vsock.cid)), f"virtio-vsock cid={c.vsock.cid}")
            slot += 1
        for f in c.fss:
            from ..devices.virtio_fs import VirtioFs

            fs = self._own(VirtioFs.open(f.tag, f.dir, f.socket, daemon=self._daemons.pop(f.tag, None)))
            self._add_virtio(slot, fs, f"virtio-fs tag={f.tag}")
            self.io.watch_hangup(fs.plane.fd, bound(self._daemon_gone, fs))
            slot += 1
        if c.rng:
            self._add_virtio(slot, VirtioRng(), "virtio-rng")
            slot += 1

    def _own(self, backend: B) -> B:
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
        built(self.vm, "VM").register_coalesced_mmio(layout.UART_BASE + PL011_DR, 4)
        self.coalesced = CoalescedRing(self.vcpus[0].fd, page, self.bus, self.uart_out)

    def _add_virtio(self, slot: int, backend: VirtioBackend, name: str) -> None:
        base, spi = layout.virtio_slot(slot)
        trigger = self.virtio_trigger
        edge = trigger == TRIGGER_EDGE
        if not self.eventfds:
            if backend.kernel_queues:
                caps = virtio_notify.needed_caps(edge)
                raise HostUnsupported(f"{name} needs {', '.join(caps)} ({trigger}-triggered interrupts), "
                                      "which this host's KVM does not all offer")
            t = VirtioMmio(base, spi, self.mem, self._edge_irq(spi) if edge else self._irq(spi), backend, trigger)
        else:
            n = virtio_notify.Notifiers(backend.num_queues, edge)
            self.notifiers.append(n)
            t = VirtioMmio(base, spi, self.mem, n.raise_irq, backend, trigger)
            n.register(built(self.vm, "VM"), base, spi)
            if backend.kernel_queues:
                backend.attach_eventfds(n.kicks, n.plane_call, direct=edge)
            n.serve(built(self.io, "I/O thread"), t,
                    [i for i in range(backend.num_queues) if i not in backend.served_queues])
        self.bus.register(base, VIRTIO_SIZE, t, name)
        self.virtio.append(t)
        if self.regpages is not None:
            t.attach_page(self.regpages.page(base, VIRTIO_SIZE))

    def _add_virtio_pci(self, backend: VirtioBackend, name: str) -> None:
        """``backend`` as a virtio-pci function (MSI-X through the ITS); the
        ITS and host bridge come with the first one."""
        if self.pci is None:
            from .pci_devices import PciDevices  # loaded only for a machine with a PCI device (start-up time)

            gic = built(self.gic, "vGIC")
            self.pci = PciDevices(built(self.vm, "VM"), self.bus, built(self.io, "I/O thread"), gic.nr_irqs() - 32)
            self.bus.register(layout.ITS_BASE, layout.ITS_SIZE, _KernelOwned(), "vGICv3 ITS")
        self.pci_virtio.append(self.pci.add_virtio(self.mem, backend, name))

    @property
    def transports(self) -> List[VirtioMmio]:
        """Every virtio transport: the virtio-mmio ones, then the virtio-pci functions."""
        return self.virtio + self.pci_virtio

    def _watch_link(self, tap: str) -> None:
        """Stop the guest when the interface of ``tap`` is deleted on the host."""
        if self.links is None:
            from ..net.link_watch import LinkWatch  # loaded only for a machine with a tap

            self.links = LinkWatch()
            built(self.io, "I/O thread").watch(self.links.fd, self._links_changed)
        if not self.links.add(tap):
            raise PyvmmError(f"virtio-net tap={tap}: the tap interface was deleted on the host while pyvmm set it up")

    def _links_changed(self) -> None:
        gone = built(self.links, "link watch").gone()
        if gone:
            from .exit_status import ExitStatus

            self.finish(ExitStatus.ERROR, f"virtio-net tap={gone[0]}: the tap interface was deleted on the host; "
                                          "the guest was stopped")

    def _daemon_gone(self, fs: VirtioFs) -> None:
        why = ""
        if fs.daemon is not None:
            time.sleep(0.1)  # let it finish dying, for its status and last words
            status, words = fs.daemon.exited(), fs.daemon.last_words()
            why = f" (virtiofsd {'exited with status ' + str(status) if status is not None else 'closed it'}" \
                  f"{': ' + words if words else ''})"
        from .exit_status import ExitStatus

        self.finish(ExitStatus.ERROR, f"virtio-fs tag={fs.tag}: the vhost-user daemon closed its socket{why}")

    def _io_failed(self, e: BaseException) -> None:
        from .exit_status import ExitStatus

        status = ExitStatus.USAGE if isinstance(e, UsageProblem) else ExitStatus.ERROR
        what = str(e) if isinstance(e, PyvmmError) else f"internal error: {type(e).__name__}: {e}"
        self.finish(status, f"virtio I/O thread: {what}")

    def device_nodes(self) -> List[fdt.Node]:
        nodes = [built(self.uart, "UART").dt_node()] + [t.dt_node() for t in self.virtio]
        return nodes + (self.pci.dt_nodes() if self.pci is not None else [])

    def load_images(self) -> None:
        """Kernel (or firmware) and initrd into RAM (they need only the VM's memory)."""
        payload = built(self.payload, "payload")
        p = payload.plan
        payload.load_into(self.mem, p.kernel_addr)
        if payload.initrd_path is not None:
            initrd_addr = built(p.initrd_addr, "initrd address")  # planned whenever there is an initrd
            payload.load_initrd(self.mem, initrd_addr)
            self._initrd_range = (initrd_addr, initrd_addr + payload.initrd_size)

    def load_payload(self) -> None:
        """The device tree into RAM (after load_images put the kernel and
        initrd there); vCPU 0 at the entry."""
        p = built(self.payload, "payload").plan
        self.dtb = fdt.build(ram_size=self.config.mem, mpidrs=[mpidr_of(v) for v in self.vcpus],
                             gic=built(self.gic, "vGIC").dt_node(its=self.pci is not None), devices=self.device_nodes(),
                             bootargs=self.cmdline, initrd=self._initrd_range,
                             stdout_path=built(self.uart, "UART").dt_path if self.config.console == "serial" else None,
                             pmu=self.pmu)
        self.mem.write(p.dtb_addr, self.dtb)
        boot = self.vcpus[0]
        boot.set_reg(regs.core("PC"), p.entry)
        boot.set_reg(regs.core("X0"), p.dtb_addr)
        # x1-x3 are 0 already: KVM_ARM_VCPU_INIT resets the vCPU, and the reset zeroes every
        # general-purpose register (arch/arm64/kvm/reset.c, kvm_reset_vcpu); three ONE_REG writes fewer
        # before the first KVM_RUN (start-up time)

    # -- running -----------------------------------------------------------------
    def console_sink(self) -> Callable[[bytes], int]:
        """Where host console input goes. Nothing is taken while the machine
        is paused (a snapshot must not see input half delivered)."""
        receive = self.console.receive if self.console is not None else built(self.uart, "UART").receive

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
            # immediate_exit is set under the lock: a thread leaving its pause point
            # clears its own flag under the same lock, so a new pause can
            # never be lost.
            self._kick()

    def pause(self, timeout: float = 30.0) -> None:
        """Stop every vCPU with its state consistent: KVM_RUN with
        immediate_exit completes a pending MMIO access and returns EINTR, so
        each thread parks with the PC past the instruction it was on. Then
        drain the coalesced ring, so every guest write reached its device."""
        with self._hold_lock:
            self._pause(timeout)

    def _pause(self, timeout: float) -> None:
        self.request_pause()
        deadline = time.monotonic() + timeout
        with self._pause_cv:
            while self._parked < len(self._threads) and not self.done.is_set():
                if time.monotonic() > deadline:
                    raise GuestError(f"the vCPUs did not stop within {timeout:.0f} s "
                                     f"({self._parked} of {len(self._threads)} parked)")
                self._pause_cv.wait(0.1)
                if self._parked < len(self._threads):
                    self._signal_threads()
        if self.done.is_set():
            raise GuestError("the guest stopped while being paused")
        if self.coalesced is not None:
            self.coalesced.drain()
        self.freeze_clock()

    def freeze_clock(self) -> None:
        """Remember the guest's counters (vCPUs stopped) for :meth:`resume`."""
        if self.hide_pauses and self._frozen_counters is None and self.vcpus:
            self._frozen_counters = [self.vcpus[0].get_reg(r) for r in regs.GUEST_COUNTERS]

    def resume(self) -> None:
        with self._hold_lock, self._pause_cv:
            frozen, self._frozen_counters = self._frozen_counters, None
            if frozen is not None and self._pause_req:
                # The counter offset is VM-wide in KVM; every vCPU is written
                # so a kernel with per-vCPU offsets agrees too.
                for v in self.vcpus:
                    for reg, value in zip(regs.GUEST_COUNTERS, frozen):
                        v.set_reg(reg, value)
            self._pause_req = False
            self._pause_cv.notify_all()

    def pause_point(self, vcpu) -> None:
        """Called by ``vcpu``'s thread each time KVM_RUN returned EINTR: park
        while a pause is requested; otherwise (the pause was lifted before
        this thread got here, or the signal was not a pause) clear the
        thread's immediate_exit, or every later KVM_RUN would return EINTR
        at once and the vCPU would never run the guest again. The flag is
        cleared under the lock that :meth:`request_pause` sets it under, so
        a pause requested meanwhile is never lost."""
        with self._pause_cv:
            if self._pause_req and not self.done.is_set():
                self._parked += 1
                self._pause_cv.notify_all()
                while self._pause_req and not self.done.is_set():
                    self._pause_cv.wait(0.5)
                self._parked -= 1
            if not self.done.is_set():
                vcpu.set_immediate_exit(False)

    def finish(self, status: ExitStatus, reason: str) -> None:
        """Record the first outcome and stop every vCPU. Safe from any thread."""
        with self._outcome_lock:
            if self._outcome is None:
                self._outcome = Outcome(status, reason)
        self.done.set()
        with self._pause_cv:
            self._pause_cv.notify_all()
        self._kick()

    def record_exits(self, counts: Dict[str, int]) -> None:
        """Add a vCPU thread's exit counts to :attr:`exits` (safe from any thread)."""
        with self._outcome_lock:
            for kind, n in counts.items():
                self.exits[kind] = self.exits.get(kind, 0) + n

    def _kick(self) -> None:
        for v in self.vcpus:
            if v.run_struct is not None:
                v.set_immediate_exit(True)
        self._signal_threads()

    def _signal_threads(self) -> None:
        me = _threads.get_ident()
        for t in self._threads:
            if t.ident is not None and t.ident != me and t.is_alive():
                try:
                    signal.pthread_kill(t.ident, KICK_SIGNAL)
                except (ProcessLookupError, OSError):
                    pass

    def run(self, on_running: Optional[Callable[[], None]] = None) -> Outcome:
        """Run until the guest powers off, resets, crashes or finish() is
        called: one thread per vCPU, this one drains the coalesced ring.
        Callable from any thread (the kick signal's handler is installed
        here if it is missing). ``on_running()`` is called once the vCPU
        threads and the I/O thread were started."""
        ensure_handler()
        t0 = time.monotonic()
        for v in self.vcpus:
            t = _threads.Thread(target=run_vcpu, args=(self, v), name=f"vcpu{v.index}")
            self._threads.append(t)
        for t in self._threads:
            t.start()
        # This thread would keep the GIL from the vCPU threads (for up to the 5 ms switch
        # interval) while it starts the I/O and console threads, which nothing needs before the
        # guest's first device access: let the first vCPU enter KVM_RUN first (the timeout
        # bounds the wait for a vCPU thread that failed before it got there).
        self.entered.wait(0.1)
        if self.io is not None:
            self.io.start()
        if self.mem.copies_pending:
            self._copier = _threads.Thread(target=self._replace_mapped_files, name="pyvmm-ram-copy")
            self._copier.start()
        if on_running is not None:
            on_running()
        ring = self.coalesced
        while not self.done.wait(0.02 if ring is not None else 0.25):
            if ring is not None and ring.pending():
                ring.drain()
        self._kick()
        self._stop_copier()
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
        out = built(self._outcome, "outcome")  # finish() recorded one before done was set
        out.exits = counter(self.exits)
        out.seconds = time.monotonic() - t0
        out.console_bytes = built(self.uart, "UART").tx_bytes + (self.console.tx_bytes if self.console else 0)
        out.regpage = "on" if self.regpages is not None else f"off: {self.regpage_off}"
        return out

    # -- the kernel's and initrd's files, mapped at load, replaced by copies ---------------
    def _replace_mapped_files(self) -> None:
        """Replace the files mapped over guest RAM at load (kernel, initrd: see
        pyvmm/memory.py for why they must not stay mapped) by anonymous copies,
        in 2 MiB pages where the host has them (the guest kernel then runs on
        huge pages, as it does in a VMM that reads it in). The files are read
        in while the guest runs on; the copy itself is made with the vCPUs
        paused (unseen by the guest, like any pause), the I/O thread and the
        vhost planes held, as a snapshot holds them. Best effort: a guest that
        ends meanwhile, or a file truncated under it, leaves the mapping."""
        copies = self.mem.prepare_copies(lambda: self._stop_copy or self.done.is_set())
        try:
            if not copies:
                return
            from .vhost_planes import restart_planes, stop_planes
            with self._hold_lock:
                if self._stop_copy or self.done.is_set():
                    return
                was_paused = self._pause_req
                if not was_paused:
                    self._pause(30.0)
                t0 = time.monotonic()
                try:
                    with self.io_lock:
                        held = stop_planes(self)
                        try:
                            n = self.mem.finish_copies(copies)
                        finally:
                            restart_planes(held)
                finally:
                    if not was_paused:
                        self.resume()
                self.files_copied = (n, time.monotonic() - t0)
        except (PyvmmError, OSError):  # the guest ended or failed meanwhile: nothing to copy for
            pass
        finally:
            for c in copies:
                c.drop()

    def _stop_copier(self) -> None:
        """Stop and join the copy thread (before RAM goes: it must not touch it after)."""
        copier, self._copier = self._copier, None
        if copier is not None:
            self._stop_copy = True
            copier.join()

    def close(self) -> None:
        self._stop_copier()
        if self.coalesced is not None:
            self.coalesced.close()
        if self.io is not None:
            self.io.close()
        if self.links is not None:
            self.links.close()
        for b in self.owned:
            b.close()
        for daemon in self._daemons.values():  # started, never handed to a device
            daemon.stop()
        self._daemons.clear()
        for n in self.notifiers:
            n.close()
        if self.pci is not None:
            self.pci.close()
        for d in self.disks:
            d.close()
        if self.gic is not None:
            self.gic.close()
        if self.vm is not None:
            self.vm.close()
        if self.regpages is not None:
            self.regpages.close()
        self.mem.close()

"""A machine's configuration and what is checked before any KVM object exists:
options (:class:`MachineConfig`), the payload in RAM (:class:`Payload`), and the
outcome values a run ends with (:class:`ExitStatus`, :class:`Outcome`)."""
from __future__ import annotations

import os

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time; type checkers read True)
if TYPE_CHECKING:
    from collections import Counter
    from typing import Any, Dict, List, Optional

    from .exit_status import ExitStatus

from .._record import field, record
from ..boot import image, layout
from ..errors import UsageProblem
from ..arm64.vec import parse_vl

if TYPE_CHECKING:  # annotations only: devspec loads when --net/--vsock/--fs are given
    from .devspec import FsSpec, NetSpec, VsockSpec


def lazy_exit_status(namespace: Dict[str, Any], module: str, name: str) -> Any:
    """A module's PEP 562 ``__getattr__`` for :class:`ExitStatus` (:mod:`pyvmm.machine.exit_status`),
    loaded on first use and then kept in ``namespace``: its :mod:`enum` is not needed before a
    guest runs (start-up time). Shared by this module and the ``pyvmm.machine`` package."""
    if name != "ExitStatus":
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    from .exit_status import ExitStatus

    namespace[name] = ExitStatus
    return ExitStatus


def __getattr__(name: str) -> Any:
    return lazy_exit_status(globals(), __name__, name)


def counter(counts: Optional[Dict[Any, int]] = None) -> Counter:
    """A :class:`collections.Counter` of ``counts``, as :class:`Outcome` holds them. The machine
    counts in plain dicts while it runs: collections (and functools, which it loads) are
    loaded here, once a run has ended (start-up time)."""
    from collections import Counter

    return Counter(counts or {})


RESET_REASON = "the guest asked for a reset"


@record
class DiskSpec:
    """A raw disk image the guest sees as a virtio-blk device."""

    path: str
    readonly: bool = False


@record
class MachineConfig:
    """What a machine is made of, as ``pyvmm run``'s options say it: the
    payload (``kernel`` with ``initrd`` and ``cmdline``, or bare-metal
    ``firmware``), RAM in bytes, vCPUs, SVE/SME vector lengths in bits
    (None: the host's largest SVE, no SME), disks, the console, what a guest
    reset does, and the KVM device node. Checked by :func:`prepare` (and
    :func:`pyvmm.api.start`), which raise UsageProblem with the reason."""

    kernel: Optional[str] = None
    initrd: Optional[str] = None
    firmware: Optional[str] = None
    cmdline: Optional[str] = None
    mem: int = 512 * layout.MiB
    cpus: int = 1
    sve_max_vl: Optional[int] = None
    # SME (docs/sme.md): streaming maximum in bits, None = every length the
    # host offers; sve=False (--no-sve) leaves SVE out, which with SME makes
    # SME-only vCPUs. sme/pmu/pauth: on wherever KVM offers them
    # (pyvmm/guest_features.py); --no-sme/--no-pmu/--no-pauth turn them off.
    sme_max_vl: Optional[int] = None
    sve: bool = True
    sme: bool = True
    pmu: bool = True
    pauth: bool = True
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


@record
class Outcome:
    """How a run ended: the status and a one-line reason, with the resets
    it went through, exit counts, seconds run, console bytes, the seconds the
    VM took to build, when (CLOCK_MONOTONIC ns) the first vCPU of the first
    machine first entered KVM_RUN, (with ``trace_mmio``) MMIO accesses
    per register, and whether virtio register reads were served from a
    register page without exits ("on", or "off: " and why)."""

    status: ExitStatus
    reason: str
    resets: int = 0
    exits: Counter = field(default_factory=counter)
    seconds: float = 0.0
    console_bytes: int = 0
    build_seconds: float = 0.0
    mmio_trace: Optional[Counter] = None
    first_run_ns: Optional[int] = None
    regpage: str = ""


def default_cmdline(console: str) -> str:
    return "console=hvc0" if console == "virtio" else "console=ttyAMA0 earlycon"


def full_cmdline(config: MachineConfig) -> str:
    """The user's -p, with a console= for the chosen console unless it names one."""
    user = (config.cmdline or "").strip()
    if "console=" in user:
        return user
    return f"{default_cmdline(config.console)} {user}".strip()


@record
class Payload:
    """What goes into RAM, checked before any KVM object exists. The kernel
    and the initrd are not kept in memory (51 MB for Debian's Image): at load
    time each file is mapped copy-on-write over guest RAM (the guest reads
    each page from the page cache on first touch: start-up does not wait for
    the whole file), or, where RAM cannot be mapped over (shared with a
    vhost-user daemon, or not page aligned on this host), read straight into it.

    ``files`` holds the kernel and initrd as :func:`prepare` opened them
    (``"kernel"``, ``"initrd"``): the first load reads the very files that were
    checked, without opening them again (on a network or FUSE file system each
    open is round trips: start-up time). A later load (a reboot) opens the paths
    anew; :meth:`close` closes what no load took."""
    data: Optional[bytes]  # firmware bytes; None for a kernel (read from kernel_path)
    plan: layout.BootPlan
    firmware: bool
    kernel_path: Optional[str] = None
    kernel_size: int = 0
    initrd_path: Optional[str] = None
    initrd_size: int = 0
    files: Dict[str, Any] = field(default_factory=dict)

    def load_into(self, mem, addr: int) -> None:
        """The kernel (or firmware) into ``mem`` at ``addr``."""
        if self.data is not None:
            mem.write(addr, self.data)
            return
        assert self.kernel_path is not None  # a kernel payload always has its path
        load_file(mem, addr, self.kernel_path, self.kernel_size, "kernel", self.files.pop("kernel", None))

    def load_initrd(self, mem, addr: int) -> None:
        """The initrd (if there is one) into ``mem`` at ``addr``."""
        if self.initrd_path is not None:
            load_file(mem, addr, self.initrd_path, self.initrd_size, "initrd", self.files.pop("initrd", None))

    def close(self) -> None:
        """Close the files :func:`prepare` opened that no load took."""
        _close_all(self.files)


def _close_all(files: Dict[str, Any]) -> None:
    while files:
        files.popitem()[1].close()


LOAD_CHUNK = 4 << 20


def load_file(mem, addr: int, path: str, size: int, what: str, f: Any = None) -> None:
    """The ``size`` bytes of the file at ``path`` (checked by :func:`prepare`)
    into guest RAM at ``addr``: mapped copy-on-write where RAM allows it, else read.
    ``f``: the file already open (unbuffered), closed here; else ``path`` is opened."""
    with f if f is not None else image.open_file(path, what, buffering=0) as f:
        if os.fstat(f.fileno()).st_size != size:
            raise UsageProblem(f"{what} {path} changed size while loading")
        if mem.mappable(addr, size):
            mem.map_file(addr, size, f.fileno(), 0)  # the mapping keeps the file
            mem.copy_mapped_file(addr, size)  # once the guest runs (Machine.run)
            return
        # read straight into guest RAM: one copy, no buffer in between, its
        # pages allocated first in one call (a 4 KiB fault each otherwise).
        # Measured in the test machine, Debian's Image into shared RAM from
        # the checkout's virtio-fs: 7.8 and 14.8 s with it, 18.0 without
        # and 21.2 with sendfile(2), one loaded run each: reading the file
        # over virtio-fs dominates, so no gain is shown yet)
        mem.populate(addr, size)
        f.seek(0)
        with mem.view(addr, size) as view:
            done = 0
            while done < size:
                n = f.readinto(view[done:done + LOAD_CHUNK])
                if not n:
                    raise UsageProblem(f"{what} {path} shrank while loading")
                done += n


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
    if not config.sme and config.sme_max_vl is not None:
        raise UsageProblem("--sme-max-vl and --no-sme contradict each other")
    for name in ("sve", "sme", "pmu", "pauth"):
        if not isinstance(getattr(config, name), bool):
            raise UsageProblem(f"{name} is {getattr(config, name)!r}, not true or false")
    if virtio_count(config) > layout.VIRTIO_SLOTS:
        raise UsageProblem(f"at most {layout.VIRTIO_SLOTS} virtio devices")


def check_disks(disks: List[DiskSpec]) -> None:
    """Each disk is a regular file this user may open as asked (run and restore)."""
    for d in disks:
        if not os.path.isfile(d.path):
            raise UsageProblem(f"--disk {d.path}: no such file" if not os.path.exists(d.path)
                               else f"--disk {d.path}: not a regular file")
        if not os.access(d.path, os.R_OK if d.readonly else os.R_OK | os.W_OK):
            raise UsageProblem(f"--disk {d.path}: permission denied"
                               + ("" if d.readonly else " (add ,ro for a read-only disk)"))


def virtio_count(config: MachineConfig) -> int:
    return (len(config.disks) + (config.console == "virtio") + config.rng + len(config.nets)
            + (config.vsock is not None) + len(config.fss))


def check_devices(config: MachineConfig) -> None:
    """The --net/--vsock/--fs values against each other and the host."""
    taps = [n.tap for n in config.nets]
    for t in set(taps):
        if taps.count(t) > 1:
            raise UsageProblem(f"--net tap={t} given twice: one virtio-net per tap")
    if config.nets:
        from ..net import tap  # loaded only for a machine with a network (start-up)
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


def prepare(config: MachineConfig, opened: Optional[Dict[str, Any]] = None) -> Payload:
    """Validate options and files; raise UsageProblem with the reason. The
    kernel and initrd stay open in the payload (:attr:`Payload.files`) for its
    first load. ``opened``: files the caller opened already, by path (unbuffered,
    read-only: :func:`pyvmm.commands.entry.take_opened`); those used are moved
    into the payload, the rest closed."""
    files: Dict[str, Any] = {}
    try:
        payload = _prepare(config, opened or {}, files)
    except BaseException:
        _close_all(files)
        raise
    finally:
        if opened:
            _close_all(opened)
    payload.files = files
    return payload


def _open(opened: Dict[str, Any], path: str, what: str) -> Any:
    f = opened.pop(path, None)
    return f if f is not None else image.open_file(path, what, buffering=0)


def _prepare(config: MachineConfig, opened: Dict[str, Any], files: Dict[str, Any]) -> Payload:
    check_options(config)
    check_devices(config)
    if bool(config.kernel) == bool(config.firmware):
        raise UsageProblem("give exactly one of --kernel IMAGE and --firmware BIN")
    check_disks(config.disks)
    initrd_size = 0
    if config.initrd:
        # opened to check it, not read: the loader maps it (start-up time)
        f = files["initrd"] = _open(opened, config.initrd, "initrd")
        initrd_size = os.fstat(f.fileno()).st_size
        if not initrd_size:
            raise UsageProblem(f"initrd {config.initrd}: the file is empty")
    has_initrd = bool(config.initrd)
    initrd_path = config.initrd or None
    if config.firmware:
        data = image.read_file(config.firmware, "firmware")
        if not data:
            raise UsageProblem(f"firmware {config.firmware}: the file is empty")
        plan = layout.plan(config.mem, len(data), 0, initrd_size, has_initrd, what="firmware")
        return Payload(data, plan, True, initrd_path=initrd_path, initrd_size=initrd_size)
    kernel = config.kernel
    assert kernel  # exactly one of kernel and firmware, checked above
    f = files["kernel"] = _open(opened, kernel, "kernel")
    try:
        head = os.pread(f.fileno(), image.HEAD_BYTES, 0)
        size = os.fstat(f.fileno()).st_size
    except OSError as e:
        raise image.ImageError(f"kernel {kernel}: {e.strerror}") from None
    hdr = image.parse_header(head, f"kernel {kernel}", file_size=size)
    plan = layout.plan(config.mem, image.load_size(hdr, size), hdr.text_offset, initrd_size, has_initrd)
    return Payload(None, plan, False, config.kernel, size, initrd_path, initrd_size)

"""The device options of ``pyvmm run`` as values: ``--net``, ``--vsock``,
``--fs``, each ``key=value[,key=value...]``. Parsing checks the syntax and
the values alone; files, interfaces and daemons are checked when the
machine is prepared."""
from __future__ import annotations

from typing import Dict, Optional, Tuple

from .._record import record
from ..errors import UsageProblem

FS_TAG_MAX = 36  # virtio 1.2, 5.11.4: tag is a 36-byte field, NUL-padded
NET_TRANSPORTS = ("mmio", "pci")  # virtio-mmio (the default), virtio-pci with MSI-X


@record(frozen=True)
class NetSpec:
    tap: str
    mac: Optional[str] = None
    vhost: bool = True
    transport: str = "mmio"  # or "pci": virtio-pci with MSI-X through the vGIC ITS


@record(frozen=True)
class VsockSpec:
    cid: int


@record(frozen=True)
class FsSpec:
    tag: str
    dir: Optional[str] = None
    socket: Optional[str] = None


def _pairs(option: str, text: str, allowed: Tuple[str, ...]) -> Dict[str, str]:
    out: Dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise UsageProblem(f"{option} {text}: {part!r} is not key=value (keys: {', '.join(allowed)})")
        if key not in allowed:
            raise UsageProblem(f"{option} {text}: unknown key {key!r} (keys: {', '.join(allowed)})")
        if key in out:
            raise UsageProblem(f"{option} {text}: {key} given twice")
        out[key] = value
    return out


def parse_net(text: str) -> NetSpec:
    from ..devices.virtio_net import parse_mac
    from ..net.tap import check_name

    kv = _pairs("--net", text, ("tap", "mac", "vhost", "transport"))
    if not kv.get("tap"):
        raise UsageProblem(f"--net {text}: tap=IFNAME is required")
    check_name(kv["tap"])
    mac = kv.get("mac")
    if mac is not None:
        try:
            parse_mac(mac)
        except ValueError as e:
            raise UsageProblem(f"--net {text}: {e}") from None
    vhost = kv.get("vhost", "on")
    if vhost not in ("on", "off"):
        raise UsageProblem(f"--net {text}: vhost={vhost}: choose on or off")
    transport = kv.get("transport", "mmio")
    if transport not in NET_TRANSPORTS:
        raise UsageProblem(f"--net {text}: transport={transport}: choose {' or '.join(NET_TRANSPORTS)}")
    return NetSpec(kv["tap"], mac.lower() if mac else None, vhost == "on", transport)


def parse_vsock(text: str) -> VsockSpec:
    from ..devices.virtio_vsock import check_cid

    kv = _pairs("--vsock", text, ("cid",))
    raw = kv.get("cid", "")
    if not raw.isdigit():
        raise UsageProblem(f"--vsock {text}: cid=N with a decimal number is required")
    return VsockSpec(check_cid(int(raw)))


def parse_fs(text: str) -> FsSpec:
    kv = _pairs("--fs", text, ("tag", "dir", "socket"))
    tag = kv.get("tag", "")
    if not tag:
        raise UsageProblem(f"--fs {text}: tag=TAG is required (the name the guest mounts: mount -t virtiofs TAG DIR)")
    if len(tag.encode()) > FS_TAG_MAX:
        raise UsageProblem(f"--fs {text}: the tag is {len(tag.encode())} bytes, at most {FS_TAG_MAX}")
    if ("dir" in kv) == ("socket" in kv):
        raise UsageProblem(f"--fs {text}: give exactly one of dir=DIR (pyvmm starts virtiofsd) and "
                           "socket=PATH (a vhost-user-fs daemon you started)")
    for key in ("dir", "socket"):
        if key in kv and not kv[key]:
            raise UsageProblem(f"--fs {text}: {key}= is empty")
    return FsSpec(tag, kv.get("dir"), kv.get("socket"))

"""A virtiofsd (Debian's package: /usr/libexec/virtiofsd) started for one
shared directory, on a socket in a private directory, and stopped again.

The sandbox: virtiofsd's default (namespaces) needs user and mount
namespaces; as root pyvmm asks for --sandbox=chroot instead, which works
everywhere root can chroot (also inside a chroot, where the namespace
sandbox fails)."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
from typing import List, Optional

from ..errors import HostUnsupported, PyvmmError
from ..unix_socket import SocketNotUp, wait_for_socket

SEARCH = ("/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd")
START_TIMEOUT = 10.0


def find_binary() -> Optional[str]:
    env = os.environ.get("PYVMM_VIRTIOFSD")
    if env:
        return env if os.access(env, os.X_OK) else None
    for p in SEARCH:
        if os.access(p, os.X_OK):
            return p
    return shutil.which("virtiofsd")


def command(binary: str, socket_path: str, shared_dir: str, root: bool) -> List[str]:
    cmd = [binary, f"--socket-path={socket_path}", f"--shared-dir={shared_dir}", "--log-level=error"]
    cmd.append("--sandbox=chroot" if root else "--sandbox=namespace")
    return cmd


class Virtiofsd:
    """The daemon for ``shared_dir``; ``socket_path`` once :meth:`start` returned."""

    def __init__(self, tag: str, shared_dir: str):
        self.tag = tag
        self.shared_dir = os.path.abspath(shared_dir)
        self.dir: Optional[str] = None
        self.proc: Optional[subprocess.Popen] = None
        self.socket_path = ""
        # Connected once the daemon accepts (it serves this one front-end):
        # waiting for the socket file alone races its listen() (ECONNREFUSED).
        self.connection: Optional[socket.socket] = None

    def spawn(self) -> "Virtiofsd":
        """Start the daemon without waiting for it (:meth:`wait_ready` does):
        a machine starts its daemons first and builds the rest meanwhile."""
        binary = find_binary()
        if binary is None:
            raise HostUnsupported(f"--fs tag={self.tag}: virtiofsd is not installed",
                                  "install Debian's virtiofsd package, or start a daemon yourself "
                                  "and give socket=PATH")
        self.dir = tempfile.mkdtemp(prefix="pyvmm-fs-")
        self.socket_path = os.path.join(self.dir, "fs.sock")
        log = open(os.path.join(self.dir, "log"), "wb")
        try:
            self.proc = subprocess.Popen(command(binary, self.socket_path, self.shared_dir, os.geteuid() == 0),
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                                         start_new_session=True)
        except OSError as e:
            log.close()
            self.stop()
            raise HostUnsupported(f"--fs tag={self.tag}: cannot start {binary}: {e.strerror}") from None
        log.close()
        return self

    def wait_ready(self) -> "Virtiofsd":
        """Connected to the daemon :meth:`spawn` started, once it accepts."""
        if self.connection is not None:
            return self
        if self.proc is None:
            raise PyvmmError(f"--fs tag={self.tag}: virtiofsd was not started")
        try:
            self.connection = wait_for_socket(self.socket_path, START_TIMEOUT, self._died, connect=True)
        except SocketNotUp as e:
            self.stop()
            raise PyvmmError(f"--fs tag={self.tag}: virtiofsd {e.died}" if e.died is not None else
                             f"--fs tag={self.tag}: virtiofsd did not open its socket within "
                             f"{START_TIMEOUT:.0f} s") from None
        return self

    def _died(self) -> Optional[str]:
        status = self.exited()
        if status is None:
            return None
        why = self.last_words()
        return f"exited with status {status}" + (f": {why}" if why else "")

    def last_words(self) -> str:
        """The last line virtiofsd wrote to stderr."""
        if self.dir is None:
            return ""
        try:
            with open(os.path.join(self.dir, "log"), "rb") as f:
                lines = f.read().decode(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1].strip() if lines else ""

    def exited(self) -> Optional[int]:
        return None if self.proc is None else self.proc.poll()

    def stop(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None
        p, self.proc = self.proc, None
        if p is not None and p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except OSError:
                pass
            try:
                p.wait(timeout=3)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except OSError:
                    pass
                p.wait()
        self.proc = p  # keeps returncode for messages
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

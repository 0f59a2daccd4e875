"""The ``pyvmm`` program (console script and ``python -m pyvmm``).

``pyvmm run``, ``restore``, ``snapshot``, ``migrate``, ``pause``, ``resume`` and
``status`` with a plainly valid command line start here without click: their parameters are read from the table that
also builds their click command (:mod:`pyvmm.commands.options`), so a guest
is not waiting for click and the ``inspect`` machinery it loads. Everything
else (other commands, ``--help``, ``--version``, every usage error) goes to
the click group in :mod:`pyvmm.cli`, which prints click's own messages.

Run as the process's own command line (``main()`` without arguments), those
commands load pyvmm's modules from the bundle of the command's name
(:mod:`pyvmm._pycbundle`: one file instead of one per module), saved anew when
the command ends if it was missing or stale; PYVMM_NO_BUNDLE=1 imports them the
usual way.

Exit status: 0 success; 1 runtime failure; 2 usage error. Errors are one
line on stderr; ``--debug`` (or PYVMM_DEBUG=1) adds the traceback.
"""
from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time; type checkers read True)
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, List, NoReturn, Optional, Sequence


def fail(error: BaseException, debug: bool) -> NoReturn:
    """Exit with one line for ``error``, being handled (the traceback too with ``debug``):
    a pyvmm error's message and status; Ctrl-C 130; anything else is a bug, status 1."""
    from ..errors import PyvmmError

    if isinstance(error, PyvmmError):
        message, status = str(error), error.exit_status
    elif isinstance(error, KeyboardInterrupt):
        message, status = "interrupted", 130
    else:
        message, status = f"internal error: {type(error).__name__}: {error} (run with --debug for the traceback)", 1
    if debug:
        import traceback

        traceback.print_exc()
    print(f"pyvmm: error: {message}", file=sys.stderr, flush=True)
    sys.exit(status)


def debug_from_env() -> bool:
    return os.environ.get("PYVMM_DEBUG") == "1"


def guarded(call: Callable[[], Any], debug: bool) -> Any:
    """``call()``, with pyvmm's exceptions (and bugs, and Ctrl-C) ending the program through :func:`fail`."""
    try:
        return call()
    except (Exception, KeyboardInterrupt) as e:
        fail(e, debug or debug_from_env())


# The commands started without click: each module has PARAMS (its table) and execute(values) -> status.
FAST = ("run", "restore", "snapshot", "migrate", "pause", "resume", "status")


def _command_module(name: str) -> Any:
    """``pyvmm.commands.NAME``, imported (by ``__import__``: importlib's package is not loaded for it)."""
    full = f"{__package__}.{name}"
    __import__(full)
    return sys.modules[full]


_opened: Dict[str, Any] = {}  # path -> file, what _open_ahead's thread opened
_opening: Any = None  # a lock its thread holds until it is done


def _open_ahead(args: Sequence[str]) -> None:
    """Open the files ``pyvmm run``'s -k/--kernel and -i/--initrd name, on a thread, while
    this one loads the command; :func:`take_opened` hands them to the run, whose checks and
    first load use them without opening them again. The guest's files may be on a file
    system where each open costs round trips (FUSE, NFS; the test machine's virtio-fs also
    drops a file's cached pages at each open: 20-125 ms for a kernel a previous guest ran
    from, docs/benchmarks.md). Nothing is read. Only regular files are kept; an error is
    left for the run's own open to report."""
    global _opening
    paths = [args[i + 1] for i in range(len(args) - 1) if args[i] in ("-k", "--kernel", "-i", "--initrd")]
    if paths:
        import _thread

        _opening = _thread.allocate_lock()
        _opening.acquire()
        _thread.start_new_thread(_open_files, (paths, _opening))


def _open_files(paths: List[str], done: Any) -> None:
    try:
        for path in paths:
            try:
                # O_NONBLOCK: a FIFO or device named by mistake must not hang this thread
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
            except (OSError, ValueError):
                continue
            try:
                regular = (os.fstat(fd).st_mode & 0o170000) == 0o100000  # S_ISREG, without the stat module
            except OSError:
                regular = False
            if not regular or path in _opened:
                os.close(fd)
                continue
            os.set_blocking(fd, True)
            _opened[path] = open(fd, "rb", buffering=0)
    finally:
        done.release()


def take_opened() -> Dict[str, Any]:
    """The files :func:`_open_ahead` opened (by path, unbuffered), once its thread is
    done; the caller owns them (:func:`pyvmm.machine.config.prepare` takes them)."""
    if _opening is not None:
        with _opening:
            pass
    files = dict(_opened)
    _opened.clear()
    return files


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = args[:1] == ["--debug"]  # the group's own option, before the command
    rest = args[1:] if debug else args
    if rest and rest[0] in FAST:
        if rest[0] == "run":
            _open_ahead(rest[1:])
        bundle = None
        if argv is None and os.environ.get("PYVMM_NO_BUNDLE") != "1":  # the process's own command line
            from .._pycbundle import install

            bundle = install(rest[0])
        from .options import parse

        command = guarded(lambda: _command_module(rest[0]), debug)
        values = parse(command.PARAMS, rest[1:])
        if values is not None:
            try:
                status = guarded(lambda: command.execute(values), debug or bool(values.get("debug")))
            finally:  # a failed command's modules were loaded all the same
                if bundle is not None:
                    bundle.save()
            sys.exit(status)
    from ..cli import main as click_main

    click_main(args)

"""The compiled modules a command loaded when it last ran, read from one file.

Every import of a module costs a fixed price whatever the module's size: importlib's
own Python looks for the file, stats the directory and the source, opens and reads
the ``.pyc``. In the test machine (an emulated CPU) that is about 3 ms a module, and
``pyvmm run`` loads some 45 of pyvmm's modules before its guest's first ``KVM_RUN``
(docs/benchmarks.md, 2026-12-06 night: start-up). A bundle holds copies of those
modules' ``.pyc`` files, header and all, in one file beside them
(``pyvmm/__pycache__/bundle-COMMAND.TAG.pyb``, TAG as in the ``.pyc`` names, e.g.
``cpython-313``); the command line (:func:`pyvmm.commands.entry.main`) puts a
:class:`Finder` for it first on ``sys.meta_path`` and saves the bundle anew when the
command ends and the bundle was missing, stale or short of a module.

A module comes from the bundle only under the rules importlib applies to a ``.pyc``
file: the header's magic number is this interpreter's, the ``.pyc`` is the timestamp
kind, and its recorded source modification time and size are those of the source file
now (one ``stat``), and that source is in the package's own directory (a bundle
copied along with a copy of the package names the first copy's files). Otherwise the
module is imported the usual way (compiled anew if its source changed), as is one whose
code does not load (a damaged body behind a valid header: compiled from its source),
and the bundle is rewritten at the end. The bundle is trusted like
the ``.pyc`` files next to it: whoever can write that directory can already replace
them. Nothing is written where Python writes no ``.pyc`` files
(``sys.dont_write_bytecode``, a directory that is not writable); a failed write leaves
the old bundle (the new one is renamed into place). Only pyvmm's own modules are
bundled.

Pure (no KVM); tests/host/test_pycbundle.py.
"""
from __future__ import annotations

import marshal
import os
import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time; type checkers read True)
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Any, Dict, Optional, Sequence, Set, Tuple

    Entry = Tuple[bool, str, str, bytes]  # is a package, source path, .pyc path, the .pyc's bytes

_ModuleSpec = type(__spec__)  # importlib's ModuleSpec, without importing importlib
_HEADER = 16  # a .pyc: magic (4), flags (4), source mtime (4), source size (4), then the marshalled code


def _magic() -> bytes:
    """This interpreter's .pyc magic number (importlib's, already loaded by every interpreter)."""
    magic: bytes = sys.modules["_frozen_importlib_external"].MAGIC_NUMBER
    return magic


def pyc_matches(pyc: bytes, source: str, magic: bytes) -> bool:
    """``pyc`` (a .pyc file's bytes) is current for ``source`` as importlib judges a timestamp
    .pyc: the interpreter's magic number, flags 0, the source's mtime and size (mod 2**32)."""
    if len(pyc) < _HEADER or pyc[:4] != magic or pyc[4:8] != b"\0\0\0\0":
        return False
    try:
        st = os.stat(source)
    except OSError:
        return False
    return (int.from_bytes(pyc[8:12], "little") == int(st.st_mtime) & 0xFFFFFFFF
            and int.from_bytes(pyc[12:16], "little") == st.st_size & 0xFFFFFFFF)


_CodeType = type(pyc_matches.__code__)  # types.CodeType, without importing types


def bundle_path(package: ModuleType, command: str) -> Optional[str]:
    """Where ``command``'s bundle of ``package`` lives: beside its ``__init__``'s .pyc
    (``__pycache__/__init__.TAG.pyc`` -> ``__pycache__/bundle-COMMAND.TAG.pyb``); None
    when the package was imported without a .pyc path."""
    cached = getattr(package, "__cached__", None)
    if not cached:
        return None
    directory, name = os.path.split(cached)
    if not (name.startswith("__init__.") and name.endswith(".pyc")):
        return None
    return os.path.join(directory, f"bundle-{command}.{name[len('__init__.'):-len('.pyc')]}.pyb")


def _load(path: str, prefix: str, directory: str) -> Dict[str, Entry]:
    """The entries of the bundle at ``path`` for modules whose names start with ``prefix``
    and whose sources are in ``directory`` (the package's: a bundle copied along with
    another copy of the package names that copy's files); empty when it is missing or not
    a bundle."""
    try:
        with open(path, "rb") as f:
            data = marshal.loads(f.read())
    except (OSError, EOFError, ValueError, TypeError):
        return {}
    if not isinstance(data, dict):
        return {}
    entries = {}
    for name, entry in data.items():
        if (isinstance(name, str) and name.startswith(prefix) and isinstance(entry, tuple) and len(entry) == 4
                and isinstance(entry[0], bool) and isinstance(entry[1], str) and isinstance(entry[2], str)
                and isinstance(entry[3], bytes) and entry[1].startswith(directory)):
            entries[name] = entry
    return entries


class Finder:
    """A ``sys.meta_path`` finder and loader for the modules of one bundle file, the
    submodules of one package (their names start with ``prefix``)."""

    def __init__(self, path: str, prefix: str, entries: Dict[str, Entry], preloaded: Sequence[str] = ()) -> None:
        self.path = path
        self.prefix = prefix
        self.entries = entries
        self.magic = _magic()
        self.served: Set[str] = set()
        self.preloaded = set(preloaded)  # loaded before this finder: never served, never saved
        self.outdated = not entries  # save() writes the bundle anew

    # importlib's finder protocol
    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        entry = self.entries.get(name)
        if entry is None:
            if name.startswith(self.prefix):
                self.outdated = True  # a module the bundle lacks: add it at the end
            return None
        is_package, source, cached, pyc = entry
        if not pyc_matches(pyc, source, self.magic):
            del self.entries[name]
            self.outdated = True
            return None
        loader: Any = self
        spec = _ModuleSpec(name, loader, origin=source, is_package=is_package)
        spec.has_location = True
        spec.cached = cached
        if is_package:
            spec.submodule_search_locations = [os.path.dirname(source)]
        return spec

    # importlib's loader protocol
    def create_module(self, spec: Any) -> None:
        return None  # the default module object

    def exec_module(self, module: ModuleType) -> None:
        name = module.__name__
        _, source, _, pyc = self.entries[name]
        try:
            code = marshal.loads(memoryview(pyc)[_HEADER:])
        except (ValueError, EOFError, TypeError):
            code = None
        if type(code) is not _CodeType:  # a damaged body behind a valid header: compile the source
            self.entries.pop(name, None)
            self.outdated = True
            with open(source, "rb") as f:
                code = compile(f.read(), source, "exec", dont_inherit=True)
        else:
            self.served.add(name)
        exec(code, module.__dict__)

    def save(self) -> bool:
        """Write the bundle anew if it was missing, stale or short of a module: its current
        entries and every submodule of the package loaded since (from their .pyc files,
        when current).
        True when written; False when not needed or not possible (silently, as for .pyc)."""
        if not self.outdated or sys.dont_write_bytecode:
            return False
        entries = dict(self.entries)
        for name, module in list(sys.modules.items()):
            if not name.startswith(self.prefix) or name in entries or name in self.preloaded:
                continue
            entry = _entry_of(module, self.magic)
            if entry is not None:
                entries[name] = entry
        tmp = f"{self.path}.{os.getpid()}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(marshal.dumps(entries))
            os.replace(tmp, self.path)
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            return False
        self.entries = entries
        self.outdated = False
        return True


def _entry_of(module: ModuleType, magic: bytes) -> Optional[Entry]:
    """A bundle entry for a module imported from a source file whose .pyc is current, else None."""
    spec = getattr(module, "__spec__", None)
    if spec is None:
        return None
    source, cached = spec.origin, spec.cached
    if not (isinstance(source, str) and source.endswith(".py") and isinstance(cached, str)):
        return None
    try:
        with open(cached, "rb") as f:
            pyc = f.read()
    except OSError:
        return None
    if not pyc_matches(pyc, source, magic):
        return None
    return (spec.submodule_search_locations is not None, source, cached, pyc)


def install(command: str, package: str = __name__.rpartition(".")[0]) -> Optional[Finder]:
    """Put the finder for ``command``'s bundle of ``package`` (imported; default pyvmm)
    first on ``sys.meta_path``, reading the bundle if there is one; None when the package
    has no .pyc path to put a bundle beside."""
    path = bundle_path(sys.modules[package], command)
    if path is None:
        return None
    prefix = package + "."
    directory = os.path.dirname(sys.modules[package].__file__ or "") + os.sep
    finder = Finder(path, prefix, _load(path, prefix, directory),
                    [name for name in sys.modules if name.startswith(prefix)])
    sys.meta_path.insert(0, finder)
    return finder

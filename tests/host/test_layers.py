"""The package's layers, read from its source with ``ast``: a module imports
only from its own layer or lower ones, the pure arm64 package does no I/O,
only the CLI prints or exits, every module opens with a docstring, and the
README's layer table names every entry of ``ls pyvmm`` exactly once."""
import ast
import os
import re

import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
PKG = os.path.join(ROOT, "pyvmm")

# Lowest first. The pure layer is below the binding and the fd layer: the fd
# layer sizes and names registers through arm64/ and explains errnos with it.
LAYERS = (
    ("base", ("_version", "errors", "_record", "_threads", "_pycbundle")),
    ("pure", ("arm64", "boot")),
    ("binding", ("_ffi_build", "_kvm_ffi", "_ffi", "ioctls")),
    ("fd", ("_fd", "kvm", "vm", "vcpu", "kvm_device", "exits", "memory", "dirty_log", "hostinfo", "unix_socket", "console_out", "vhost", "net")),
    ("features", ("sme", "vecstate", "caps", "guest_features", "abi_check", "devices")),
    ("machine", ("machine",)),
    ("snapshot", ("snapshot",)),
    ("migration", ("migration",)),
    ("control", ("control",)),
    # The package's __init__ re-exports the api module's names (loaded on first use).
    ("api", ("api", "__init__")),
    ("cli", ("commands", "cli", "__main__")),
)
RANK = {top: rank for rank, (_, tops) in enumerate(LAYERS) for top in tops}
CLI_TOPS = {"commands", "cli", "__main__"}
# Standard modules that mean I/O or a file descriptor: the pure arm64 package never needs them.
IO_MODULES = {"os", "io", "mmap", "socket", "select", "signal", "subprocess", "threading", "fcntl",
              "tempfile", "shutil", "ctypes", "cffi"}


def _modules():
    for dirpath, dirnames, filenames in os.walk(PKG):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for f in sorted(filenames):
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                rel = os.path.relpath(path, PKG)[:-3].split(os.sep)
                if rel[-1] == "__init__" and len(rel) > 1:
                    rel = rel[:-1]
                    is_pkg = True
                else:
                    is_pkg = rel == ["__init__"]
                yield ["pyvmm"] + ([] if rel == ["__init__"] else rel), is_pkg, path


MODULES = list(_modules())


def _imports(name, is_pkg, tree):
    """Every pyvmm module ``tree`` imports (anywhere, including inside
    functions), as dotted names, with the line."""
    package = name if is_pkg else name[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "pyvmm":
                    yield a.name.split("."), node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1] + (node.module.split(".") if node.module else [])
            else:
                base = node.module.split(".")
            if base[0] != "pyvmm":
                continue
            for a in node.names:
                yield base + [a.name], node.lineno


def _top(dotted):
    """The top-level entry of pyvmm a dotted name falls in (``pyvmm`` alone is the package's __init__)."""
    return dotted[1] if len(dotted) > 1 and dotted[1] in RANK else "__init__"


def _parse(path):
    with open(path, encoding="utf-8") as f:
        return ast.parse(f.read(), path)


@pytest.mark.parametrize("name,is_pkg,path", MODULES, ids=lambda x: ".".join(x) if isinstance(x, list) else "")
def test_imports_go_down_the_layers(name, is_pkg, path):
    me = _top(name)
    assert me in RANK, f"{'.'.join(name)} is in no layer: add it to LAYERS and the README table"
    for target, line in _imports(name, is_pkg, _parse(path)):
        top = _top(target)
        assert RANK[top] <= RANK[me], (
            f"{os.path.relpath(path, ROOT)}:{line} imports {'.'.join(target)} "
            f"({LAYERS[RANK[top]][0]} layer) from the lower {LAYERS[RANK[me]][0]} layer")


@pytest.mark.parametrize("name,is_pkg,path", [m for m in MODULES if m[0][1:2] == ["arm64"]],
                         ids=lambda x: ".".join(x) if isinstance(x, list) else "")
def test_arm64_is_pure(name, is_pkg, path):
    tree = _parse(path)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for m in mods:
                assert m.split(".")[0] not in IO_MODULES, f"{path}:{node.lineno} imports {m}"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id != "open", f"{path}:{node.lineno} opens a file"
    for target, line in _imports(name, is_pkg, tree):
        assert _top(target) in ("arm64", "errors", "_record"), f"{path}:{line} imports {'.'.join(target)}"


@pytest.mark.parametrize("name,is_pkg,path", [m for m in MODULES if _top(m[0]) not in CLI_TOPS],
                         ids=lambda x: ".".join(x) if isinstance(x, list) else "")
def test_only_the_cli_prints_or_exits(name, is_pkg, path):
    for node in ast.walk(_parse(path)):
        if isinstance(node, ast.Call):
            f = node.func
            called = f.id if isinstance(f, ast.Name) else (
                f"{f.value.id}.{f.attr}" if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else "")
            assert called not in ("print", "exit", "quit", "sys.exit", "os._exit"), \
                f"{os.path.relpath(path, ROOT)}:{node.lineno} calls {called}"
        if isinstance(node, ast.Raise) and node.exc is not None:
            exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            assert not (isinstance(exc, ast.Name) and exc.id == "SystemExit"), \
                f"{os.path.relpath(path, ROOT)}:{node.lineno} raises SystemExit"


@pytest.mark.parametrize("name,is_pkg,path", [m for m in MODULES if m[0][-1] != "_kvm_ffi"],
                         ids=lambda x: ".".join(x) if isinstance(x, list) else "")
def test_every_module_opens_with_its_job(name, is_pkg, path):
    doc = ast.get_docstring(_parse(path))
    assert doc and doc.strip(), f"{os.path.relpath(path, ROOT)} has no opening docstring"


def test_the_readme_layer_table_matches_ls_pyvmm():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    start = readme.index("<!-- layers:")
    rows = []
    for line in readme[start:].splitlines()[1:]:
        if not line.startswith("|"):
            if rows:
                break
            continue
        rows.append(line)
    listed = {}
    layers = []
    for row in rows[2:]:  # header and separator
        cells = [c.strip() for c in row.strip("|").split("|")]
        layers.append(cells[0])
        for entry in re.findall(r"`([^`]+)`", cells[1]):
            assert entry not in listed, f"README layer table names {entry} twice"
            listed[entry] = cells[0]
    entries = {e + ("/" if os.path.isdir(os.path.join(PKG, e)) else "")
               for e in os.listdir(PKG) if e != "__pycache__" and not e.endswith(".egg-info")}
    assert set(listed) == entries, (f"README table lacks {sorted(entries - set(listed))}, "
                                    f"names what is not in pyvmm/: {sorted(set(listed) - entries)}")
    assert layers == [name for name, _ in LAYERS], "README layers differ from this test's LAYERS"
    for entry, layer in listed.items():
        top = entry.rstrip("/").rsplit(".", 1)[0] if not entry.endswith((".h", ".typed")) else None  # data files
        if top is not None:
            assert LAYERS[RANK[top]][0] == layer, f"{entry}: README says {layer}, the test {LAYERS[RANK[top]][0]}"

"""Start-up: each command loads only what it needs (issue 13, item 5). Checked
in a fresh interpreter per case, by which modules end up in ``sys.modules``:
the CLI alone loads no command; ``pyvmm run`` loads neither the snapshot,
control, abi-check nor network modules, nor the test-only libraries, nor
``typing`` and ``re``. (How
long start-up takes is measured by bench/startup.py, not here.)"""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def loaded_after(code: str):
    """The modules a fresh interpreter holds after running ``code``."""
    script = code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    env = dict(os.environ, PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", script], stdout=subprocess.PIPE, check=True, env=env,
                         cwd=ROOT, timeout=120).stdout
    return set(json.loads(out.splitlines()[-1]))


def words_printed_by(code: str):
    """The words a fresh interpreter prints running ``code`` (with the checkout on its path)."""
    r = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, check=True,
                       env=dict(os.environ, PYTHONPATH=ROOT), cwd=ROOT, timeout=120)
    return r.stdout.split()


def under(mods, *prefixes):
    return sorted(m for m in mods if any(m == p or m.startswith(p + ".") for p in prefixes))


TEST_ONLY = ("hypothesis", "pytest", "png", "libfdt")


def run_until_kvm(tmp_path, *python_flags, path=ROOT):
    """The words a fresh interpreter prints at exit (the sorted ``sys.modules``) after ``pyvmm run`` as the console script and ``python -m pyvmm`` start
    it, up to opening KVM (a node that does not exist here: the run ends there, on any host,
    after loading the machine)."""
    from support.image import make_image

    k = tmp_path / "Image"
    k.write_bytes(make_image(image_size=8 << 20, body=8192))
    code = ("import atexit, sys\n"
            "atexit.register(lambda: print(*sorted(sys.modules)))\n"
            "from pyvmm.commands.entry import main\n"
            f"main(['run', '-k', {str(k)!r}, '--kvm', {str(tmp_path / 'no-kvm')!r}])\n")
    r = subprocess.run([sys.executable, *python_flags, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, env=dict(os.environ, PYTHONPATH=path), cwd=ROOT, timeout=120)
    assert r.returncode == 1 and r.stderr.startswith("pyvmm: error: "), r.stderr
    return r.stdout.split()


def test_run_starts_without_click_or_dataclasses(tmp_path):
    loaded = run_until_kvm(tmp_path)
    mods = set(loaded) - loaded_after("")  # what run loads beyond the interpreter's own start-up
    assert {"pyvmm.machine.machine", "pyvmm.api", "pyvmm.commands.run"} <= mods  # the check below means something
    assert under(mods, "click", "dataclasses", "inspect", "re", "ast", "pyvmm.cli", *TEST_ONLY) == []


def test_run_path_loads_no_typing_regex_or_sysreg_table(tmp_path):
    # the same, in `python -S` (no site: .pth files of the host's site-packages may load typing
    # themselves; site-packages stays on the path for cffi). Each module costs start-up time in
    # the emulated test machine (issue 13, item 5).
    import site

    mods = run_until_kvm(tmp_path, "-S", path=os.pathsep.join([ROOT, *site.getsitepackages()]))
    assert "pyvmm.machine.machine" in mods and "pyvmm.arm64.regs" in mods  # the checks below mean something
    assert under(mods, "typing", "re", "contextlib", "warnings", "collections.abc", "signal", "binascii",
                 "struct", "bisect", "pyvmm.arm64.errno_explain") == []  # struct, bisect: their C cores do
    # threads and locks come from _thread (pyvmm/_threads.py): threading loads warnings, _weakrefset
    # and types, about 35 ms in the emulated test machine
    assert under(mods, "threading", "_weakrefset", "types") == []
    # the system registers' table (names, encodings) and the vGIC's save/restore side load on first
    # use: the registers the run path names are literals in pyvmm/arm64/regs.py (tests/host/test_regs.py
    # checks them against the table), and a guest that boots never saves its vGIC; the console
    # endpoints load only for a --console-out other than the terminal
    assert under(mods, "pyvmm.arm64.sysregs", "pyvmm.machine.gic_state", "pyvmm.machine.gic_regs",
                 "pyvmm.console_out") == []


def test_the_file_copy_of_a_running_guest_loads_no_typing():
    # Machine.run's copy of the kernel's and initrd's mapped files (every `pyvmm run` with -k) loads
    # the vhost planes' module while the guest boots: typing with its collections, functools and
    # types was about 200 ms of the emulated test machine's CPU beside the boot (2026-12-06)
    import site

    code = ("import sys\nimport pyvmm.commands.run, pyvmm.machine.machine\nbefore = set(sys.modules)\n"
            "import pyvmm.machine.vhost_planes\nprint(*sorted(set(sys.modules) - before))\n")
    r = subprocess.run([sys.executable, "-S", "-c", code], stdout=subprocess.PIPE, text=True, check=True, cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, *site.getsitepackages()])), timeout=120)
    new = r.stdout.split()
    assert "pyvmm.machine.vhost_planes" in new  # the check below means something
    assert under(new, "typing", "collections", "functools", "types", "enum", "re") == []


def test_a_caught_kvm_error_loads_no_explanations():
    # the SME probe catches VCPU_INIT's ENOENT on kernels without SME, and looks only at the errno
    code = ("import errno, sys\nfrom pyvmm._fd import KvmFd\n"
            "e = KvmFd(-1).error('KVM_ARM_VCPU_INIT', errno.ENOENT)\n"
            "print(e.errno == errno.ENOENT, 'pyvmm.arm64.errno_explain' in sys.modules)\n"
            "e = KvmFd(-1).error('KVM_GET_ONE_REG', errno.EBUSY, 'ZA[0]')\n"
            "print('SVCR.ZA = 0' in str(e), 'pyvmm.arm64.errno_explain' in sys.modules)\n")
    assert words_printed_by(code) == ["True", "False", "True", "True"]


@pytest.mark.parametrize("args", [["restore", "/nonexistent/vm.snap"], ["snapshot", "/nonexistent/vm.sock", "x.snap"],
                                  ["pause", "/nonexistent/vm.sock"], ["resume", "/nonexistent/vm.sock"],
                                  ["status", "/nonexistent/vm.sock", "--json"]],
                         ids=lambda a: a[0])
def test_restore_and_snapshot_start_without_click(args):
    code = ("import atexit, sys\n"
            "atexit.register(lambda: print('\\n'.join(sorted(sys.modules))))\n"
            f"from pyvmm.commands.entry import main\nmain({args!r})\n")
    r = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       env=dict(os.environ, PYTHONPATH=ROOT), cwd=ROOT, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("pyvmm: error: "), r.stderr
    mods = set(r.stdout.split())
    assert f"pyvmm.commands.{args[0]}" in mods
    assert under(mods, "click", "pyvmm.cli", *TEST_ONLY) == []


def test_importing_the_cli_loads_no_command():
    mods = loaded_after("import pyvmm.cli") - {"pyvmm.commands", "pyvmm.commands.entry"}  # the program, no command
    assert under(mods, "pyvmm.commands", "pyvmm.snapshot", "pyvmm.machine", "pyvmm.kvm", "pyvmm.control",
                 "pyvmm.abi_check", "_cffi_backend", "cffi", *TEST_ONLY) == []


def test_run_loads_no_snapshot_control_or_network_module():
    # what `pyvmm run -k ... ` imports up to building the machine (no KVM needed to load them)
    mods = loaded_after("from pyvmm.cli import cli\ncli.get_command(None, 'run')\nimport pyvmm.api")
    assert "pyvmm.machine.machine" in mods  # the check below means something
    assert under(mods, "pyvmm.snapshot", "pyvmm.control", "pyvmm.abi_check", "pyvmm.vhost",
                 "pyvmm.devices.virtio_net", "pyvmm.devices.virtio_fs", "pyvmm.devices.virtio_vsock",
                 "pyvmm.commands.snapshot", "pyvmm.commands.restore", "pyvmm.commands.inspect",
                 "pyvmm.vecstate", "pyvmm.net", "pyvmm.unix_socket", "hashlib", "hmac", "socket", "base64",
                 "pyvmm.devices.state", *TEST_ONLY) == []  # state: read when a snapshot is, not to boot
    # devices and option parsers of devices not configured (no --disk, --console virtio, --net, --fs, --vsock)
    assert under(mods, "pyvmm.machine.devspec", "pyvmm.devices.virtio_blk", "pyvmm.devices.virtio_console") == []


@pytest.mark.parametrize("name", ["inspect", "diff", "caps", "restore-plan", "pause"])
def test_a_command_loads_only_its_own_module(name):
    mods = loaded_after(f"from pyvmm.cli import cli\ncli.get_command(None, {name!r})")
    from pyvmm.cli import COMMANDS

    own = f"pyvmm.commands.{COMMANDS[name][0]}"
    assert own in mods
    others = {f"pyvmm.commands.{m}" for m, *_ in COMMANDS.values()} - {own}
    assert sorted(others & mods) == []
    assert under(mods, "pyvmm.machine", *TEST_ONLY) == []


def test_every_command_in_the_table_is_the_command_of_that_name():
    from pyvmm.cli import COMMANDS, cli

    for name in COMMANDS:
        assert cli.get_command(None, name).name == name
    assert cli.get_command(None, "no-such-command") is None


def test_help_lists_every_command():
    from click.testing import CliRunner

    from pyvmm.cli import COMMANDS, cli

    out = CliRunner().invoke(cli, ["--help"]).output
    for name in COMMANDS:
        assert f"  {name} " in out


def test_help_loads_no_command():
    # `pyvmm --help` lists the commands from the table in pyvmm.cli: no command module, machine or KVM binding
    mods = loaded_after("import sys\nfrom pyvmm.cli import main\nsys.argv = ['pyvmm', '--help']\n"
                        "try:\n    main()\nexcept SystemExit:\n    pass")
    assert "click" in mods
    assert sorted(m for m in mods if m.startswith("pyvmm.commands.")) == ["pyvmm.commands.entry"]
    assert under(mods, "pyvmm.machine", "pyvmm.kvm", "pyvmm._kvm_ffi", "pyvmm.control") == []


def test_help_lines_fit_and_match_the_loaded_commands():
    # each listed line fits an 80-column terminal untruncated and is what the loaded command shows
    from click.testing import CliRunner

    from pyvmm.cli import COMMANDS, cli

    out = CliRunner().invoke(cli, ["--help"], terminal_width=80).output
    for name, (_, _, line) in COMMANDS.items():
        assert f"  {name.ljust(12)}  {line}\n" in out
        assert cli.get_command(None, name).get_short_help_str(80) == line


def test_restore_loads_no_thread_pool_or_random_before_the_guest_runs():
    # what `pyvmm restore SNAP` imports up to building the machine; the RAM check's thread
    # pool (concurrent.futures, which loads logging) is loaded by that check, beside the guest
    mods = loaded_after("from pyvmm.cli import cli\ncli.get_command(None, 'restore')\nimport pyvmm.api\n"
                        "from pyvmm.snapshot import format, machine_snapshot, trust")
    assert "pyvmm.snapshot.ram_image" in mods
    assert under(mods, "concurrent", "logging", "secrets", "random", "pyvmm.commands.snapshot",
                 "pyvmm.abi_check", *TEST_ONLY) == []


def test_run_path_loads_no_enum_functools_or_collections(tmp_path):
    # ExitStatus (an IntEnum) loads when a run ends; exits are counted in dicts (a Counter only in the
    # Outcome); the records are tuples without namedtuple: enum, and the functools and collections it
    # loads, cost ~0.2 s in the emulated test machine (issue 13, item 5). (threading, which 3.11's
    # loads functools and collections with, is not loaded either: pyvmm/_threads.py.)
    import site

    path = os.pathsep.join([ROOT, *site.getsitepackages()])
    mods = run_until_kvm(tmp_path, "-S", path=path)
    assert "pyvmm.machine.vcpu_loop" in mods and "pyvmm.api" in mods  # the check below means something
    out = subprocess.run([sys.executable, "-S", "-c", "import sys; print(*sys.modules)"],
                         stdout=subprocess.PIPE, text=True, check=True, timeout=120).stdout
    own = set(out.split())
    assert under(set(mods) - own, "threading", "enum", "functools", "collections", "operator", "keyword", "reprlib", "heapq",
                 "pyvmm.machine.exit_status", "pyvmm.exits") == []  # exits: decoded at the first non-MMIO exit


def test_exit_status_is_one_class_wherever_it_is_named():
    code = ("import sys\nimport pyvmm, pyvmm.api, pyvmm.machine, pyvmm.machine.config as c\n"
            "loaded = 'pyvmm.machine.exit_status' in sys.modules\n"
            "from pyvmm.machine import ExitStatus\n"
            "print(loaded, ExitStatus is pyvmm.api.ExitStatus is pyvmm.ExitStatus is c.ExitStatus, "
            "int(ExitStatus.TERMINATED), isinstance(ExitStatus.CRASH, int), c.Outcome(ExitStatus.CRASH, 'x').exits)\n")
    assert words_printed_by(code) == ["False", "True", "143", "True", "Counter()"]


def test_the_installed_command_is_bin_pyvmm_and_loads_no_regex(tmp_path):
    # pip writes a wrapper that imports re for a [project.scripts] entry point; pyvmm ships
    # bin/pyvmm instead (pyproject.toml script-files), which pip installs with its #!python line
    # made the environment's interpreter
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        pyproject = f.read()
    assert "\n[project.scripts]" not in pyproject and 'script-files = ["bin/pyvmm"]' in pyproject
    script = os.path.join(ROOT, "bin", "pyvmm")
    with open(script) as f:
        assert f.readline() == "#!python\n"
    assert os.access(script, os.X_OK)
    from support.image import make_image

    k = tmp_path / "Image"
    k.write_bytes(make_image(image_size=8 << 20, body=8192))
    code = ("import atexit, sys\n"
            "atexit.register(lambda: print(*sorted(sys.modules)))\n"
            f"sys.argv = [{script!r}, 'run', '-k', {str(k)!r}, '--kvm', {str(tmp_path / 'no-kvm')!r}]\n"
            f"exec(compile(open({script!r}).read(), {script!r}, 'exec'), {{'__name__': '__main__'}})\n")
    import site

    path = os.pathsep.join([ROOT, *site.getsitepackages()])  # -S: site's .pth files may load re themselves
    r = subprocess.run([sys.executable, "-S", "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       env=dict(os.environ, PYTHONPATH=path), cwd=str(tmp_path), timeout=120)
    assert r.returncode == 1 and r.stderr.startswith("pyvmm: error: "), r.stderr
    mods = set(r.stdout.split())
    assert "pyvmm.machine.machine" in mods  # the check below means something
    assert under(mods, "re", "runpy", "click", *TEST_ONLY) == []
    r = subprocess.run([sys.executable, script, "--version"], stdout=subprocess.PIPE, text=True, check=True,
                       env=dict(os.environ, PYTHONPATH=ROOT), cwd=str(tmp_path), timeout=120)
    assert r.stdout.startswith("pyvmm, version ")


def test_run_prepares_the_payload_once(tmp_path):
    # pyvmm run prepares the payload (usage errors before touching the terminal: the kernel's
    # header read, the initrd opened) and hands it to the session, which then does not open the
    # files again (start-up time: the test machine's guest files are on virtio-fs). Shown by
    # deleting them between the two: a session given the payload gets as far as opening KVM, one
    # without it stops at the missing files.
    from support.image import make_image

    from pyvmm.errors import HostUnsupported, UsageProblem
    from pyvmm.machine import MachineConfig, Session, prepare

    k, i = tmp_path / "Image", tmp_path / "initrd"
    k.write_bytes(make_image(image_size=8 << 20, body=8192))
    i.write_bytes(b"\x07" * 4096)
    config = MachineConfig(kernel=str(k), initrd=str(i), mem=64 << 20, kvm_path=str(tmp_path / "no-kvm"))
    payload = prepare(config)
    assert payload.initrd_size == 4096
    k.unlink()
    i.unlink()
    with pytest.raises(HostUnsupported):
        Session(config, lambda data: None, payload=payload).run()
    assert payload.files == {}  # the files prepare kept open are closed when the run fails early
    with pytest.raises(UsageProblem, match="initrd .*: no such file"):
        Session(config, lambda data: None).run()


def test_the_open_ahead_of_run_files_never_blocks_or_raises(tmp_path):
    # pyvmm run opens its -k/-i files on a thread while it loads (pyvmm/commands/entry.py): a
    # missing file, a directory or a FIFO without a writer (an open that would block) are passed
    # over and closed; only the regular file is kept, blocking, for take_opened
    from pyvmm.commands import entry

    fifo, regular = tmp_path / "fifo", tmp_path / "Image"
    os.mkfifo(fifo)
    regular.write_bytes(b"x")
    fds = len(os.listdir("/proc/self/fd"))
    args = ["-k", str(tmp_path / "missing"), "--initrd", str(tmp_path), "-i", str(fifo), "-k", str(regular)]
    entry._open_ahead(["-c", "1", *args])
    files = entry.take_opened()  # waits for the thread
    assert list(files) == [str(regular)]
    f = files[str(regular)]
    assert os.get_blocking(f.fileno()) and f.read() == b"x"
    assert len(os.listdir("/proc/self/fd")) == fds + 1  # the others it opened are closed
    f.close()
    assert entry.take_opened() == {}  # handed over once


def test_prepare_checks_and_first_loads_the_files_it_was_handed(tmp_path):
    # the files pyvmm run opened ahead are the ones checked and loaded (not opened again: on a
    # FUSE or network file system each open costs round trips); a reboot's load opens the path
    # anew; files handed over but not used, and those no load took, are closed
    from support.image import make_image

    from pyvmm.boot import layout
    from pyvmm.errors import UsageProblem
    from pyvmm.machine import MachineConfig, prepare
    from pyvmm.memory import GuestMemory

    k, i, other = tmp_path / "Image", tmp_path / "initrd", tmp_path / "other"
    image = make_image(image_size=8 << 20, body=8192)
    k.write_bytes(image)
    i.write_bytes(b"\x07" * 4096)
    other.write_bytes(b"unused")
    opened = {str(p): open(p, "rb", buffering=0) for p in (k, i, other)}
    k.rename(tmp_path / "Image.old")  # the path now names nothing: only the open file can be read
    i.unlink()
    config = MachineConfig(kernel=str(k), initrd=str(i), mem=64 << 20)
    payload = prepare(config, opened)
    assert opened == {} and sorted(payload.files) == ["initrd", "kernel"]
    assert payload.kernel_size == len(image) and payload.initrd_size == 4096
    mem = GuestMemory()
    mem.add(layout.RAM_BASE, 64 << 20)
    try:
        payload.load_into(mem, payload.plan.kernel_addr)
        payload.load_initrd(mem, payload.plan.initrd_addr)
        assert mem.read(payload.plan.kernel_addr, len(image)) == image
        assert mem.read(payload.plan.initrd_addr, 4096) == b"\x07" * 4096
        assert payload.files == {}
        with pytest.raises(UsageProblem, match="kernel .*: no such file"):  # a reboot opens the path
            payload.load_into(mem, payload.plan.kernel_addr)
    finally:
        mem.close()
    fds = len(os.listdir("/proc/self/fd"))
    (tmp_path / "Image.old").rename(k)
    i.write_bytes(b"\x07" * 4096)
    payload = prepare(config)
    assert len(os.listdir("/proc/self/fd")) == fds + 2  # kernel and initrd, kept for the first load
    payload.close()
    assert len(os.listdir("/proc/self/fd")) == fds and payload.files == {}
    i.write_bytes(b"")
    with pytest.raises(UsageProblem, match="initrd .*: the file is empty"):
        prepare(config, {str(k): open(k, "rb", buffering=0)})
    assert len(os.listdir("/proc/self/fd")) == fds  # a refusal closes what was opened and handed over

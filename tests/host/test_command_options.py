"""``pyvmm run``, ``restore`` and ``snapshot`` start without click (issue 13,
item 5): each command's parameters are one table (pyvmm/commands/options.py)
read by a small parser and turned into its click command. The parser reads
every valid command line as click does, and leaves every other one to click,
so usage errors, --help and their exit statuses are click's own; errors after
parsing are one line, as through click."""
import os
import subprocess
import sys

import click
import pytest

from pyvmm.commands import migrate as migrate_module, pause as pause_module, restore as restore_module, resume as resume_module
from pyvmm.commands import run as run_module, snapshot as snapshot_module, status as status_module
from pyvmm.commands.options import parse

from support.image import make_image

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")

VALID = [
    [],
    ["-k", "Image"],
    ["-kImage", "-iinitrd", "-pquiet console=ttyAMA0", "-m1G", "-c2"],
    ["--kernel=Image", "--initrd", "x", "--params=", "--mem", "2G", "--cpus=4"],
    ["-k", "a", "-k", "b"],  # the last one wins
    ["--disk", "a.img", "--disk=b.img,ro", "--net", "tap=t0", "--fs", "tag=x,dir=/", "--vsock", "cid=3"],
    ["--no-sve", "--no-sme", "--no-pmu", "--no-pauth", "--no-rng", "--debug", "--debug"],
    ["--sve-max-vl", "512", "--sme-max-vl=256", "-c", " 3 "],
    ["-p", "--help", "-k", "-h"],  # values that look like options are values
    ["--console", "virtio", "--console-out", "unix:/tmp/s", "--on-reboot", "exit", "--kvm", "/dev/kvm2",
     "--control", "/tmp/c", "--dump-dtb", "d.dtb", "--firmware", "fw.bin", "--"],
]

NOT_FOR_THE_PARSER = [
    ["--help"], ["-h"], ["-k", "x", "--help"], ["--bogus"], ["-x"], ["-c", "two"], ["--cpus=1.5"], ["-k"],
    ["--mem"], ["--no-sve=1"], ["extra"], ["-k", "x", "--", "y"], ["-"], [""], ["--kern", "x"],
    ["-no-sve"], ["--version"],
]


@pytest.mark.parametrize("args", VALID, ids=" ".join)
def test_the_parser_reads_a_valid_command_line_as_click_does(args):
    expected = run_module.run.make_context("run", list(args)).params
    assert parse(run_module.PARAMS, args) == expected


@pytest.mark.parametrize("args", NOT_FOR_THE_PARSER, ids=" ".join)
def test_the_parser_leaves_help_and_every_usage_error_to_click(args):
    assert parse(run_module.PARAMS, args) is None
    with pytest.raises((click.UsageError, click.exceptions.Exit)):
        run_module.run.make_context("run", list(args), help_option_names=["-h", "--help"])


RESTORE_VALID = [["s.snap"], ["--incoming", "unix:/x"], ["s.snap", "--clock", "keep", "--paused", "--control", "c"],
                 ["--disk", "a", "--disk=b,ro", "-k", "K", "-iI", "--firmware", "f", "--on-reboot", "exit", "s",
                  "--console-out", "pty", "--verify", "--kvm", "/k", "--debug"], ["--", "-odd-name.snap"]]
RESTORE_NOT = [["a", "b"], ["--clock", "bad", "s"], ["--clock"], ["-h"], ["s", "--paused=1"]]
SNAPSHOT_VALID = [["sock", "out"], ["sock", "out", "--stop", "--since", "prev"], ["--since=p", "sock", "--", "out"]]
SNAPSHOT_NOT = [[], ["sock"], ["a", "b", "c"], ["sock", "out", "--since"], ["--help"]]
CONTROL_VALID = [["sock"], ["--", "-odd.sock"]]
STATUS_VALID = [["sock"], ["sock", "--json"], ["--json", "sock"]]
CONTROL_NOT = [[], ["a", "b"], ["--json", "sock"], ["-h"]]
STATUS_NOT = [[], ["a", "b"], ["sock", "--json=1"], ["--help"]]
MIGRATE_VALID = [["sock", "unix:/d"], ["sock", "tcp:h:1", "--max-downtime", "1", "--bandwidth=1048576", "--json"],
                 ["--json", "--max-downtime=3600000", "sock", "--", "unix:-x"]]
MIGRATE_NOT = [["sock"], ["sock", "d", "--max-downtime", "0"], ["sock", "d", "--max-downtime=3600001"],
               ["sock", "d", "--bandwidth", "0"], ["sock", "d", "--bandwidth=1048577"], ["s", "d", "--bandwidth", "x"],
               ["s", "d", "--json=1"], ["--help"]]


@pytest.mark.parametrize("module,args", [(restore_module, a) for a in RESTORE_VALID] +
                         [(snapshot_module, a) for a in SNAPSHOT_VALID] +
                         [(m, a) for m in (pause_module, resume_module) for a in CONTROL_VALID] +
                         [(status_module, a) for a in STATUS_VALID] +
                         [(migrate_module, a) for a in MIGRATE_VALID], ids=str)
def test_restore_and_snapshot_read_a_valid_command_line_as_click_does(module, args):
    command = getattr(module, module.__name__.rsplit(".", 1)[1])
    assert parse(module.PARAMS, args) == command.make_context(command.name, list(args)).params


@pytest.mark.parametrize("module,args", [(restore_module, a) for a in RESTORE_NOT] +
                         [(snapshot_module, a) for a in SNAPSHOT_NOT] +
                         [(m, a) for m in (pause_module, resume_module) for a in CONTROL_NOT] +
                         [(status_module, a) for a in STATUS_NOT] +
                         [(migrate_module, a) for a in MIGRATE_NOT], ids=str)
def test_restore_and_snapshot_leave_the_rest_to_click(module, args):
    command = getattr(module, module.__name__.rsplit(".", 1)[1])
    assert parse(module.PARAMS, args) is None
    with pytest.raises((click.UsageError, click.exceptions.Exit)):
        command.make_context(command.name, list(args), help_option_names=["-h", "--help"])


@pytest.mark.parametrize("module", [run_module, restore_module, snapshot_module, pause_module, resume_module,
                                    status_module, migrate_module], ids=lambda m: m.__name__)
def test_the_table_is_the_click_command(module):
    command = getattr(module, module.__name__.rsplit(".", 1)[1])
    assert [p.name for p in command.params if p.name != "help"] == [o.dest for o in module.PARAMS]
    for p, o in zip(command.params, module.PARAMS):
        assert tuple(p.opts) == (getattr(o, "flags", None) or (o.dest,))


def pyvmm(*args):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "pyvmm", *map(str, args)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT, timeout=120)


def through_click(*args):
    env = dict(os.environ, PYTHONPATH=ROOT)
    code = f"from pyvmm.cli import main; main({list(map(str, args))!r})"
    return subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env=env, cwd=ROOT, timeout=120)


@pytest.mark.parametrize("args", [["run", "--bogus"], ["run", "-c", "two"], ["run", "-k"], ["run", "extra"],
                                  ["run", "--no-sve=1"], ["--debug", "run", "--mem"], ["restore", "a", "b"],
                                  ["restore", "--clock", "never", "s"], ["snapshot", "sock"],
                                  ["snapshot", "a", "b", "c"], ["pause"], ["resume", "a", "b"],
                                  ["status", "s", "--json=1"], ["migrate", "s", "d", "--max-downtime", "0"],
                                  ["migrate", "s"]], ids=" ".join)
def test_usage_errors_are_clicks_own(args):
    got, want = pyvmm(*args), through_click(*args)
    assert got.returncode == want.returncode == 2
    assert (got.stdout, got.stderr) == (want.stdout, want.stderr)
    assert "Error: " in got.stderr


@pytest.mark.parametrize("name,shown", [("run", "--sve-max-vl BITS"), ("restore", "--clock [hide|keep]"),
                                        ("snapshot", "--since PREVIOUS"), ("pause", "SOCKET"),
                                        ("resume", "SOCKET"), ("status", "--json"),
                                        ("migrate", "--max-downtime MS")])
def test_help_is_clicks_own(name, shown):
    got, want = pyvmm(name, "--help"), through_click(name, "--help")
    assert got.returncode == 0 and got.stdout == want.stdout and shown in got.stdout


@pytest.mark.parametrize("debug", [False, True])
def test_an_error_after_parsing_is_one_line_with_its_status(tmp_path, debug):
    args = ["run", "-k", tmp_path / "missing"] + (["--debug"] if debug else [])
    r = pyvmm(*args)
    assert r.returncode == 2
    lines = r.stderr.splitlines()
    assert lines[-1] == f"pyvmm: error: kernel {tmp_path / 'missing'}: no such file"
    if debug:
        assert len(lines) > 1 and lines[0].startswith("Traceback")
    else:
        assert len(lines) == 1
        assert (r.returncode, r.stderr) == (through_click(*args).returncode, through_click(*args).stderr)


def test_a_runtime_error_is_one_line_and_status_1(tmp_path):
    k = tmp_path / "Image"
    k.write_bytes(make_image(image_size=8 << 20, body=8192))
    r = pyvmm("run", "-k", k, "--kvm", tmp_path / "no-kvm")
    assert r.returncode == 1, r.stderr
    assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith("pyvmm: error: "), r.stderr


@pytest.mark.parametrize("args,status,message", [
    (["restore"], 2, "give a snapshot file SNAP or --incoming ADDRESS (one of them)"),
    (["restore", "/nonexistent/vm.snap"], 2, "snapshot /nonexistent/vm.snap does not exist"),
    (["snapshot", "/nonexistent/vm.sock", "/tmp/x.snap"], 2, "no control socket at /nonexistent/vm.sock"),
    (["migrate", "/nonexistent/vm.sock", "unix:/tmp/in.sock"], 2, "no control socket at /nonexistent/vm.sock"),
    (["migrate", "/nonexistent/vm.sock", "ftp:x"], 2, "ftp:x"),
])
def test_restore_and_snapshot_errors_are_one_line_as_through_click(args, status, message):
    got, want = pyvmm(*args), through_click(*args)
    assert got.returncode == want.returncode == status
    assert got.stderr == want.stderr and len(got.stderr.splitlines()) == 1 and message in got.stderr

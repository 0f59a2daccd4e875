"""``pyvmm run`` refuses bad input with one line and exit status 2, before
touching KVM (so these run on any host)."""
import gzip
import platform

import pytest
from click.testing import CliRunner

from pyvmm.cli import cli
from pyvmm.commands.run import parse_disk
from pyvmm.machine import MachineConfig, full_cmdline

from support.image import make_image


@pytest.fixture
def files(tmp_path):
    k = tmp_path / "Image"
    k.write_bytes(make_image(image_size=8 << 20, body=8192))
    i = tmp_path / "initrd"
    i.write_bytes(b"070701" + bytes(100))
    return tmp_path, k, i


def run(*args):
    r = CliRunner().invoke(cli, ["run", *map(str, args)])
    return r.exit_code, r.output


def one_line_error(out):
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) == 1, out
    assert lines[0].startswith("pyvmm: error: ") or lines[0].startswith("Error: "), out
    return lines[0]


@pytest.mark.parametrize("make,reason", [
    (lambda p: None, "no such file"),
    (lambda p: p.write_bytes(b""), "the file is empty"),
    (lambda p: p.write_bytes(make_image()[:32]), "truncated"),
    (lambda p: p.write_bytes(gzip.compress(make_image())), "gzip-compressed"),
    (lambda p: p.write_bytes(bytes(0x1FE) + b"\x55\xaa\xeb\x66HdrS" + bytes(64)), "x86 bzImage"),
    (lambda p: p.write_bytes(make_image(magic=0xDEADBEEF)), "bad magic"),
])
def test_bad_kernels(tmp_path, make, reason):
    k = tmp_path / "k"
    make(k)
    status, out = run("-k", k)
    assert status == 2 and reason in one_line_error(out)


def test_bad_options(files):
    d, k, i = files
    cases = [
        (["-k", k, "-m", "1M"], "too small"),
        (["-k", k, "-m", "lots"], "not understood"),
        (["-k", k, "-c", "0"], "--cpus 0"),
        (["-k", k, "-c", "500"], "--cpus 500"),
        (["-k", k, "-i", d / "none"], "no such file"),
        (["-k", k, "--disk", d / "none.img"], "no such file"),
        (["-k", k, "--sve-max-vl", "100"], "multiple of 128"),
        (["-k", k, "--firmware", k], "exactly one of"),
        ([], "exactly one of"),
        (["-k", k, "--console", "vga"], "vga"),
    ]
    big = d / "BigImage"
    big.write_bytes(make_image(image_size=40 << 20, body=8192))
    cases.append((["-k", big, "-m", "32M"], "is too small"))
    for args, reason in cases:
        status, out = run(*args)
        assert status == 2, (args, out)
        assert reason in one_line_error(out), (args, out)


def test_initrd_larger_than_ram(files):
    d, k, _ = files
    big = d / "big.cpio"
    with open(big, "wb") as f:
        f.truncate(80 << 20)
    status, out = run("-k", k, "-i", big, "-m", "64M")
    assert status == 2 and "larger than RAM" in one_line_error(out)


@pytest.mark.skipif(platform.machine() in ("aarch64", "arm64"), reason="checks the message on a non-arm64 host")
def test_valid_input_on_a_non_arm64_host_says_where_to_run(files):
    _, k, i = files
    status, out = run("-k", k, "-i", i)
    assert status == 1
    assert "ci/qemu-aarch64/run" in one_line_error(out)


def test_parse_disk():
    assert parse_disk("a.img").readonly is False
    assert parse_disk("a.img,ro").readonly is True
    assert parse_disk("a,b.img,rw").path == "a,b.img"


def test_cmdline_gets_a_console():
    assert full_cmdline(MachineConfig(cmdline="quiet")) == "console=ttyAMA0 earlycon quiet"
    assert full_cmdline(MachineConfig(cmdline="quiet", console="virtio")) == "console=hvc0 quiet"
    assert full_cmdline(MachineConfig(cmdline="console=ttyAMA0,115200")) == "console=ttyAMA0,115200"


def test_a_vector_length_the_host_does_not_offer_is_refused_with_the_offered_list():
    # The same call pyvmm run makes after reading SVE_VLS (the test machine offers
    # every length 128..2048, so the refusal is checked here with a host that does not).
    from pyvmm.errors import HostUnsupported
    from pyvmm.sme import choose_vqs

    with pytest.raises(HostUnsupported) as e:
        choose_vqs([1, 2, 4], 384, "--sve-max-vl")
    msg = str(e.value)
    assert "--sve-max-vl 384 bits is not offered by this host" in msg and "128, 256, 512" in msg
    assert "\n" not in msg and e.value.exit_status == 1  # the host cannot, the option is well formed
    assert choose_vqs([1, 2, 3, 4], 384, "--sve-max-vl") == [1, 2, 3]


def test_the_readme_exit_status_table_is_what_pyvmm_returns():
    import os
    import re

    from pyvmm.errors import GuestError, HostUnsupported, KvmError, UsageProblem
    from pyvmm.machine import ExitStatus
    from pyvmm.snapshot.format import SnapshotError

    readme = open(os.path.join(os.path.dirname(__file__), "..", "..", "README.md"), encoding="utf-8").read()
    table = readme[readme.index("<!-- exit-status:"):].split("\n\n")[0]
    rows = {}
    for line in table.splitlines()[3:]:
        status, when = [c.strip() for c in line.strip("|").split("|")]
        for s in status.split(" / "):
            rows[int(s)] = when
    assert sorted(rows) == [0, 1, 2, 3, 4, 130, 143]
    for cls in (HostUnsupported, KvmError, GuestError, SnapshotError):
        assert cls.exit_status == 1 and cls.__name__ in rows[1]
    assert UsageProblem.exit_status == 2 and "UsageProblem" in rows[2]
    assert {int(s) for s in ExitStatus} == set(rows)
    assert re.search(r"vector length the host does not offer", rows[1])
    assert "not a multiple of 128" in rows[2]

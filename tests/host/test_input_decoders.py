"""Property tests for the decoders that take outside input (issue 14 #5):
driven from valid objects with one mutation each, every one ends in a
result or a clean refusal (a PyvmmError with a one-line message), never in
another exception (the CLI's "internal error")."""
import json

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings, strategies as st

from pyvmm.cli import cli
from pyvmm.errors import PyvmmError
from pyvmm.vecstate import SavedVecState
from support.mutate import mutated

VALID_STATE = SavedVecState.of(sve_vqs=(1, 2), sme_vqs=(1, 2, 4), sme_bit=10, fa64=False, sme2=True, svcr=3,
                               registers={"Z0": bytes(32), "P0": bytes(4), "ZA[0]": bytes(64), "ZT0": bytes(64),
                                       "SVCR": b"\x03" + bytes(7)}).to_dict()


def _clean(fn):
    try:
        return fn()
    except PyvmmError as e:
        assert str(e) and "\n" not in str(e), repr(e)
        return e


def test_the_valid_state_plans():
    from pyvmm.arm64 import restore_plan

    shape = SavedVecState.from_dict(VALID_STATE).shape()
    assert restore_plan.plan(shape, fresh=True).steps


@given(doc=mutated(VALID_STATE))
@settings(max_examples=400, deadline=None)
def test_property_vector_state(doc):
    from pyvmm.arm64 import restore_plan

    def decode_and_plan():
        return restore_plan.plan(SavedVecState.from_json(json.dumps(doc)).shape(), fresh=True)

    _clean(decode_and_plan)


@pytest.mark.parametrize("content,message", [
    (b"PYVMMSNP\x01\x00\x00\x00" + bytes(64), "this is a pyvmm snapshot, not a vector state"),
    (b"\xff\xfe{}", "vector state is not UTF-8 text (byte 0)"),
    (b"[" * 100_000, "vector state is nested deeper than 32 levels"),
    (b'{"format": "pyvmm-vecstate", "version": NaN}', "vector state is not JSON (NaN is not a JSON number"),
    (b'{"format": "pyvmm-vecstate", "version": 1000e306}', "vector state is not JSON (1000e306 does not fit"),
])
def test_restore_plan_state_file_refusals(tmp_path, content, message):
    """Issue 14 #5: `restore-plan --state vm.snap` ended in internal error: UnicodeDecodeError."""
    f = tmp_path / "in"
    f.write_bytes(content)
    r = CliRunner().invoke(cli, ["restore-plan", "--state", str(f)])
    assert r.exit_code == 2, r.output
    assert r.output.startswith(f"pyvmm: error: {message}") and r.output.count("\n") == 1, r.output


# -- snapshot manifests ----------------------------------------------------------------

class FakeKvm:
    """A stand-in KVM handle for the checks that ask the host (named fake:
    no VM is ever made): offers no optional capability."""
    path = "/dev/kvm"

    def check_extension(self, cap):
        return 0


@pytest.fixture
def no_host(monkeypatch, tmp_path):
    from pyvmm import hostinfo, sme

    monkeypatch.setattr(hostinfo, "cntfrq", lambda kvm=None: 62_500_000)
    monkeypatch.setattr(sme, "discover", lambda kvm, bit=None: sme.SmeDiscovery(None, None, (), "probed", "fake"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


def _valid_machine():
    from pyvmm.machine import DiskSpec, MachineConfig
    from support.snapshots import machine_snapshot

    config = MachineConfig(kernel="/k/Image", mem=64 << 20, cpus=2, console="virtio",
                           disks=[DiskSpec("/d.img", True)], sve_max_vl=256)
    return machine_snapshot(config, devices={"uart": {}, "virtio": [
        {"base": 0xA000000, "device_id": 3, "state": {}}, {"base": 0xA000200, "device_id": 2, "state": {}}]})


VALID_MACHINE = _valid_machine()


def _consumers(snap):
    """Everything that reads a manifest without a VM: restore's checks, inspect, diff, the ZA picture."""
    from pyvmm.snapshot import describe, za_png
    from pyvmm.snapshot import machine_snapshot as ms
    from pyvmm.snapshot import trust

    from pyvmm.machine import DiskSpec

    for step in (lambda: ms.check(FakeKvm(), snap, trust.HostChoice(disks=[DiskSpec("/dev/null")])),
                 lambda: describe.render_inspect(describe.inspect(snap)),
                 lambda: describe.diff(snap, VALID_MACHINE), lambda: za_png.za_tiles(snap)):
        _clean(step)


def test_the_valid_machine_snapshot_passes_the_reader(no_host):
    from pyvmm.snapshot import describe, schema

    schema.check(VALID_MACHINE)
    assert "machine: 2 vCPUs, 64 MiB" in describe.render_inspect(describe.inspect(VALID_MACHINE))


@given(doc=mutated(VALID_MACHINE.manifest))
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_property_machine_manifest(no_host, doc):
    """Any one change to a valid manifest (then a valid file checksum, as an
    attacker would write): decoded and used, or refused with a reason."""
    from pyvmm.snapshot import format as fmt

    blobs = {k: bytes(v) for k, v in VALID_MACHINE.blobs.items()}
    try:
        data = fmt.encode(fmt.Snapshot(doc, blobs))
    except ValueError:
        return  # not JSON at all (NaN): cannot be written
    snap = _clean(lambda: fmt.decode(data))
    if isinstance(snap, PyvmmError):
        return
    _consumers(snap)


@pytest.mark.parametrize("change,message", [
    # the issue's malformed snapshots, each with its field-exact refusal (exit 2)
    (lambda m: m.update(blobs={"a": 1}), "'blobs' must be a list"),
    (lambda m: m["blobs"][0].update(offset=1e308), "blobs[0] state: 'offset' must be an integer"),
    (lambda m: m["vcpus"][0].update(features=[2, 5000]), "vcpus[0] state: 'features' must be a list of integers in 0x0..0xff, not [2, 5000]"),
    (lambda m: m["vcpus"][0].update(features=[-1, 4]), "'features' must be a list of integers in 0x0..0xff, not [-1, 4]"),
    (lambda m: m["vcpus"][0].update(sve_vls=[2, 1]), "'sve_vls' must be strictly increasing"),
    (lambda m: m["vcpus"][0].update(sve_vls=[1, 17]), "'sve_vls' must be a list of integers in 0x1..0x10 or null, not [1, 17]"),
    (lambda m: m["vcpus"][0].update(mp_state=1 << 40), "'mp_state' must be an integer in 0x0..0xa, not 1099511627776"),
    (lambda m: m["vcpus"][0].update(index=1 << 64), "'index' must be an integer in 0x0..0x7a"),
    (lambda m: m["vcpus"][0].update(events="not base64!"), "vcpus[0] state: 'events' is not valid base64"),
    (lambda m: m["vcpus"][0].update(mp_state=5), "every vCPU is stopped (mp_state 5)"),
    (lambda m: m["machine"]["config"].update(mem=1.5), "'mem' must be an integer"),
    (lambda m: m["machine"]["config"].update(mem=32 << 30), "RAM of 67108864 bytes does not match the configuration's 34359738368"),
    (lambda m: m["machine"]["config"].update(firmware="/fw.bin"), "'kernel' and 'firmware' are both set"),
    (lambda m: m["machine"]["memory"][0].update(size="64M"), "'size' must be an integer"),
    # virtio interrupt trigger types (a state without "version" is version 1: level)
    (lambda m: m["machine"]["devices"]["virtio"][0]["state"].update(version=2, trigger="edge"),
     "snapshot machine.devices.virtio: edge- and level-triggered interrupts mixed"),
    (lambda m: m["machine"]["devices"]["virtio"][1]["state"].update(version=2, trigger="pulse"),
     "virtio-mmio state: 'trigger' must be one of 'edge', 'level', not 'pulse'"),
    (lambda m: m["machine"]["devices"]["virtio"][1]["state"].update(version=2),
     "virtio-mmio state: version 2 lacks 'trigger'"),
    (lambda m: m["machine"]["devices"]["virtio"][0]["state"].update(version=3, trigger="edge"),
     "virtio-mmio state is version 3, this pyvmm reads up to 2"),
])
def test_issue_malformed_snapshots_are_refused_field_exact(no_host, change, message):
    from pyvmm.snapshot import format as fmt
    from pyvmm.snapshot import schema

    doc = json.loads(json.dumps(VALID_MACHINE.manifest))
    doc["vcpus"] = doc["vcpus"][:1]
    doc["machine"]["config"]["cpus"] = 1
    change(doc)
    blobs = {k: bytes(v) for k, v in VALID_MACHINE.blobs.items()}
    body = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()  # the table as written, unchanged
    data = fmt._HEADER.pack(fmt.MAGIC, 1, len(body)) + body + b"".join(blobs[e["name"]] for e in
                                                                      VALID_MACHINE.manifest["blobs"])
    import hashlib

    data += hashlib.sha256(data).digest()
    with pytest.raises(PyvmmError) as info:
        schema.check(fmt.decode(data))
    assert message in str(info.value)
    assert info.value.exit_status == 2 and "\n" not in str(info.value)


def test_virtio_trigger_of_a_snapshot(no_host):
    """Restore builds the machine's virtio interrupts with the trigger type
    its snapshot was taken with: level for states from before edge (no
    version), edge for version 2 "edge", edge for a machine without virtio."""
    from pyvmm.snapshot import schema

    devices = json.loads(json.dumps(VALID_MACHINE.manifest["machine"]["devices"]))
    assert schema.virtio_trigger(devices) == "level"
    for v in devices["virtio"]:
        v["state"].update(version=2, trigger="edge")
    assert schema.virtio_trigger(devices) == "edge"
    assert schema.virtio_trigger({"uart": {}, "virtio": []}) == "edge"


def test_deeply_nested_manifest(no_host):
    from pyvmm.snapshot import format as fmt

    doc = json.loads(json.dumps(VALID_MACHINE.manifest))
    doc["created_by"] = [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["deep"]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]
    data = fmt.encode(fmt.Snapshot(doc, {k: bytes(v) for k, v in VALID_MACHINE.blobs.items()}))
    with pytest.raises(fmt.SnapshotError, match="manifest is nested deeper than 32 levels"):
        fmt.decode(data)


def _walked_depth(data, limit):
    """json_depth's reference: every byte walked (strings with escapes skipped)."""
    depth = deepest = 0
    in_string = escaped = False
    for b in data:
        if in_string:
            escaped, in_string = (False, True) if escaped else (b == 0x5C, b != 0x22)
        elif b == 0x22:
            in_string = True
        elif b in b"[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest
        elif b in b"]}":
            depth -= 1
    return deepest


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=60).map(lambda b: bytes(b'[]{}"a\\ '[x % 8] for x in b)), st.integers(1, 6))
def test_json_depth_equals_a_walk_of_every_byte(data, limit):
    from pyvmm.devices.state import json_depth

    assert json_depth(data, limit) == _walked_depth(data, limit)

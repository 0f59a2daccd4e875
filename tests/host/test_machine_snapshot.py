"""The machine snapshot's pure parts: configuration round trip and the
refusals of check() that need no VM (a fake KVM handle: check() refuses
before it ever touches KVM for these)."""
import pytest

from pyvmm import hostinfo
from pyvmm.errors import HostUnsupported, UsageProblem
from pyvmm.machine import DiskSpec, MachineConfig
from pyvmm.snapshot import format as fmt
from pyvmm.snapshot import machine_snapshot as ms
from support.fake_kvm import FakeKvm


def _snap(**machine_overrides):
    config = MachineConfig(kernel="/k/Image", initrd=None, cmdline="quiet", mem=256 << 20, cpus=2,
                           disks=[DiskSpec("/d/disk.img", True)])
    machine = {"cntfrq": 62_500_000, "gic": {"model": "gicv3", "state": {}}, "sme_bit": None,
               "config": ms.config_to_json(config),
               "memory": [{"slot": 0, "gpa": 0x40000000, "size": 256 << 20, "blob": "ram0", "stored_pages": 0}],
               "devices": {"uart": {}, "virtio": []}}
    machine.update(machine_overrides)
    return fmt.Snapshot({"kind": "machine", "machine": machine, "vcpus": [{}, {}]}, {})


def test_config_round_trip():
    c = MachineConfig(kernel="/k/Image", cmdline="x", mem=512 << 20, cpus=3, sve_max_vl=256, sme_max_vl=512,
                      sve=False, console="virtio", disks=[DiskSpec("/a.img", False)], on_reboot="exit")
    back = ms.config_from_json(ms.config_to_json(c))
    assert back == c


@pytest.mark.parametrize("change,match,error,status", [
    ({"gic": {"model": "gicv2", "state": {}}}, "gicv2", UsageProblem, 2),
    ({"cntfrq": 1}, "CNTFRQ differs", HostUnsupported, 1),  # this host's timer cannot run at the saved rate
])
def test_refusals(monkeypatch, change, match, error, status):
    monkeypatch.setattr(hostinfo, "cntfrq", lambda: 62_500_000)
    with pytest.raises(error, match=match) as e:
        ms.check(FakeKvm(), _snap(**change))
    assert e.value.exit_status == status


def test_wrong_kind_and_invalid_config(monkeypatch):
    monkeypatch.setattr(hostinfo, "cntfrq", lambda: 62_500_000)
    snap = _snap()
    snap.manifest["kind"] = "baremetal"
    with pytest.raises(UsageProblem, match="not a pyvmm run machine"):
        ms.check(FakeKvm(), snap)
    for key, value in (("cpus", 0), ("mem", 1 << 60), ("console", "vga")):
        snap = _snap()
        snap.manifest["machine"]["config"][key] = value
        with pytest.raises(fmt.SnapshotError, match="configuration is invalid"):
            ms.check(FakeKvm(), snap)


def test_missing_disk_is_refused_before_anything_starts(monkeypatch):
    monkeypatch.setattr(hostinfo, "cntfrq", lambda: 62_500_000)
    with pytest.raises(UsageProblem, match="disk /d/disk.img does not exist"):
        ms.check(FakeKvm(), _snap())


def test_timer_ppi_levels_are_left_to_the_timers():
    """The vtimer (PPI 11 = INTID 27), ptimer (30), secure (29) and hyp (26)
    line levels are cleared before the vGIC restore; other PPIs are kept."""
    state = {"nr_irqs": 128, "redist": [{"LINE_LEVEL": (1 << 27) | (1 << 30) | (1 << 23)},
                                        {"LINE_LEVEL": (1 << 26) | (1 << 29)}]}
    out = ms._without_timer_levels(state)
    assert [r["LINE_LEVEL"] for r in out["redist"]] == [1 << 23, 0]
    assert state["redist"][0]["LINE_LEVEL"] == (1 << 27) | (1 << 30) | (1 << 23)  # the snapshot is untouched
    assert ms._without_timer_levels({"redist": "junk"}) == {"redist": "junk"}  # left for restore to refuse

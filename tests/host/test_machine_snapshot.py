"""The machine snapshot's pure parts: configuration round trip and the
refusals of check() that need no VM (a fake KVM handle: check() refuses
before it ever touches KVM for these)."""
import pytest

from pyvmm import hostinfo
from pyvmm.errors import HostUnsupported, UsageProblem
from pyvmm.machine import DiskSpec, MachineConfig
from pyvmm.snapshot import format as fmt
from pyvmm.snapshot import machine_snapshot as ms
from pyvmm.snapshot import trust
from support.fake_kvm import FakeKvm
from support.fake_machine import DeviceLists
from support.snapshots import machine_snapshot


def _snap(**machine_overrides):
    config = MachineConfig(kernel="/k/Image", initrd=None, cmdline="quiet", mem=256 << 20, cpus=2,
                           disks=[DiskSpec("/d/disk.img", True)])
    return machine_snapshot(config, **machine_overrides)



def test_config_round_trip():
    c = MachineConfig(kernel="/k/Image", cmdline="x", mem=512 << 20, cpus=3, sve_max_vl=256, sme_max_vl=512,
                      console="virtio", disks=[DiskSpec("/a.img", False)], on_reboot="exit", pmu=False)
    back = ms.config_from_json(ms.config_to_json(c))
    assert back == c
    # what run refuses, restore refuses (issue 14 #6): one validation path
    with pytest.raises(UsageProblem, match="^snapshot machine.config: --sve-max-vl and --no-sve contradict"):
        ms.config_from_json(ms.config_to_json(MachineConfig(kernel="/k", sve=False, sve_max_vl=256)))


@pytest.mark.parametrize("change,match,error,status", [
    ({"gic": {"model": "gicv2", "state": {}}}, "gicv2", UsageProblem, 2),
    ({"cntfrq": 1}, "CNTFRQ differs", HostUnsupported, 1),  # this host's timer cannot run at the saved rate
])
def test_refusals(monkeypatch, change, match, error, status):
    monkeypatch.setattr(hostinfo, "cntfrq", lambda kvm=None: 62_500_000)
    with pytest.raises(error, match=match) as e:
        ms.check(FakeKvm(), _snap(**change))
    assert e.value.exit_status == status


def test_wrong_kind_and_invalid_config(monkeypatch):
    monkeypatch.setattr(hostinfo, "cntfrq", lambda kvm=None: 62_500_000)
    snap = _snap()
    snap.manifest["kind"] = "baremetal"
    with pytest.raises(UsageProblem, match="not a pyvmm run machine"):
        ms.check(FakeKvm(), snap)
    for key, value, match in (("cpus", 0, "--cpus 0: pyvmm runs 1 to 123 vCPUs"),
                              ("mem", 1 << 60, "--mem 1073741824G does not fit in the 40-bit guest address space"),
                              ("console", "vga", "--console 'vga': choose serial or virtio")):
        snap = _snap()
        snap.manifest["machine"]["config"][key] = value
        with pytest.raises(UsageProblem, match=f"^snapshot machine.config: {match}"):
            ms.check(FakeKvm(), snap)


def test_missing_disk_is_refused_before_anything_starts(monkeypatch):
    monkeypatch.setattr(hostinfo, "cntfrq", lambda kvm=None: 62_500_000)
    with pytest.raises(UsageProblem, match="^--disk /d/disk.img: no such file$"):
        ms.check(FakeKvm(), _snap(), trust.HostChoice(disks=[DiskSpec("/d/disk.img", True)]))


def test_timer_ppi_levels_are_left_to_the_timers():
    """The vtimer (PPI 11 = INTID 27), ptimer (30), secure (29) and hyp (26)
    line levels are cleared before the vGIC restore; other PPIs are kept."""
    state = {"nr_irqs": 128, "redist": [{"LINE_LEVEL": (1 << 27) | (1 << 30) | (1 << 23)},
                                        {"LINE_LEVEL": (1 << 26) | (1 << 29)}]}
    out = ms._without_timer_levels(state)
    assert [r["LINE_LEVEL"] for r in out["redist"]] == [1 << 23, 0]
    assert state["redist"][0]["LINE_LEVEL"] == (1 << 27) | (1 << 30) | (1 << 23)  # the snapshot is untouched
    assert ms._without_timer_levels({"redist": "junk"}) == {"redist": "junk"}  # left for restore to refuse


def test_virtio_slot_mismatch_says_what_differs():
    """Issue 14 #7: not "device at 0xa000000 does not match the machine's at 0xa000000"."""
    ms.check_virtio_slot(0, {"base": 0xA000000, "device_id": 2}, 0xA000000, 2)
    with pytest.raises(fmt.SnapshotError, match="^snapshot virtio device at 0xa000000 has device id 3, "
                                                "the machine's there has device id 2$"):
        ms.check_virtio_slot(0, {"base": 0xA000000, "device_id": 3}, 0xA000000, 2)
    with pytest.raises(fmt.SnapshotError, match="^snapshot virtio device 1 is at 0xa000400, "
                                                "the machine's is at 0xa000200$"):
        ms.check_virtio_slot(1, {"base": 0xA000400, "device_id": 2}, 0xA000200, 2)


def test_config_round_trip_with_data_planes_and_old_snapshots():
    from pyvmm.machine.devspec import NetSpec, VsockSpec

    c = MachineConfig(kernel="/k/Image", nets=[NetSpec("pv0", "52:54:00:00:00:09")], vsock=VsockSpec(9), rng=False)
    assert ms.config_from_json(ms.config_to_json(c)) == c
    old = ms.config_to_json(MachineConfig(kernel="/k/Image"))
    for key in ("rng", "nets", "vsock"):
        del old[key]
    back = ms.config_from_json(old)  # a snapshot from before these devices: none of them
    assert back.rng is False and back.nets == [] and back.vsock is None
    for bad in ({"nets": [{"tap": "a/b", "mac": "52:54:00:00:00:01", "vhost": True}]},
                {"nets": [{"tap": "pv0,mac=52:54:00:00:00:02", "mac": "52:54:00:00:00:01", "vhost": True}]},
                {"vsock": {"cid": 1}}, {"rng": "yes"}):
        d = ms.config_to_json(MachineConfig(kernel="/k/Image"))
        d.update(bad)
        with pytest.raises(UsageProblem, match=r"^snapshot machine\.config"):
            ms.config_from_json(d)


def test_vhost_planes_are_stopped_around_the_save_and_fs_is_refused():
    import threading
    from types import SimpleNamespace

    from pyvmm.devices.virtio_fs import VirtioFs
    from pyvmm.devices.virtio_vsock import VirtioVsock
    from support.fake_vhost import FakePlane

    plane = FakePlane(0)
    vs = VirtioVsock(plane, 5)
    vs.running, vs.started = True, [0, 1]
    queues = [SimpleNamespace(last_avail=0) for _ in range(3)]
    t = SimpleNamespace(backend=vs, queues=queues, driver_features=0, lock=threading.RLock())  # as VirtioMmio's
    m = DeviceLists([t])
    with ms._planes_stopped(m):
        assert plane.calls[1:] == [("set_running", False), ("get_vring_base", 0), ("get_vring_base", 1)]
    assert plane.calls[-1] == ("set_running", True)
    m.virtio.append(SimpleNamespace(backend=VirtioFs(FakePlane(0), "t")))
    with pytest.raises(UsageProblem, match="cannot snapshot this machine: virtio-fs"):
        ms.check_snapshottable(m)
    m.virtio.pop()
    m.pci_virtio.append(SimpleNamespace(backend=VirtioFs(FakePlane(0), "t")))  # the virtio-pci functions too
    with pytest.raises(UsageProblem, match="cannot snapshot this machine: virtio-fs"):
        ms.check_snapshottable(m)


def test_vcpus_are_read_in_parallel_in_index_order_and_a_failure_is_raised_after_all_ended(monkeypatch):
    import threading
    import types

    barrier = threading.Barrier(3, timeout=10)  # all three reads at once, or the barrier breaks
    names = {}

    def save(v, feats, sme_bit, cache):  # a fake of vcpu_state.save_with_blob: pure logic
        names[v] = threading.current_thread().name
        barrier.wait()
        if v == "bad":
            raise UsageProblem("vcpu read failed")
        return f"state of {v}"
    monkeypatch.setattr(ms.vcpu_state, "save_with_blob", save)
    m = types.SimpleNamespace(vcpus=["a", "b", "c"], vcpu_features=[[], [], []], sme_bit=None)
    assert ms._save_vcpus(m, {}) == ["state of a", "state of b", "state of c"]
    assert len(set(names.values())) == 3
    m.vcpus = ["a", "bad", "c"]
    before = threading.active_count()
    with pytest.raises(UsageProblem, match="vcpu read failed"):
        ms._save_vcpus(m, {})
    assert threading.active_count() == before

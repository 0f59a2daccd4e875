"""inspect/diff on machine snapshots (pure): field-level differences,
memory compared page by page, the short machine summary, virtio devices
named by their device ids."""
import importlib
import os

from pyvmm import devices
from pyvmm.machine import DiskSpec, MachineConfig
from pyvmm.snapshot import describe, memory_image
from pyvmm.snapshot import format as fmt
from support.snapshots import machine_snapshot


def test_differences_name_the_changed_leaf():
    a = {"gic": {"state": {"dist": {"ISPENDR": [0, 1, 0]}, "nr_irqs": 128}}, "cntfrq": 5}
    b = {"gic": {"state": {"dist": {"ISPENDR": [0, 3, 0]}, "nr_irqs": 128}}, "cntfrq": 5}
    assert describe.differences(a, b, "machine") == [("machine.gic.state.dist.ISPENDR[1]", 1, 3)]
    assert describe.differences(a, a) == []


def test_memory_pages_split_runs_back_into_pages():
    mem = bytearray(16 * 4096)
    for page in (2, 3, 4, 9):
        mem[page * 4096] = page
    blob, stored = memory_image.pack(bytes(mem))
    pages = memory_image.pages(blob, len(mem))
    assert stored == 4 and sorted(pages) == [2 * 4096, 3 * 4096, 4 * 4096, 9 * 4096]
    assert all(len(p) == 4096 and p[0] == off // 4096 for off, p in pages.items())


def _machine_snap(pending_word: int, page_value: int) -> fmt.Snapshot:
    config = MachineConfig(kernel="/k", mem=256 << 20, cpus=2, console="virtio", disks=[DiskSpec("/d.img", True)])
    return machine_snapshot(
        config, pages={3: bytes([page_value]) + bytes(4095)}, cntfrq=1000,
        gic={"model": "gicv3", "state": {"nr_irqs": 128, "dist": {"ISPENDR": [pending_word, 0, 0],
                                                                  "ISENABLER": [6, 0, 0]}}},
        devices={"uart": {"level": False, "rx": ""},
                 "virtio": [{"base": 0xa000000, "device_id": 3,
                             "state": {"status": 15, "queues": [{"ready": True}, {"ready": False}], "error": None}},
                            {"base": 0xa000200, "device_id": 19, "state": {"status": 7, "queues": []}},
                            {"base": 0xa000400, "device_id": 42, "state": {"status": 0, "queues": []}}]})


def test_diff_of_machine_snapshots_is_field_and_page_level():
    out = describe.diff(_machine_snap(0, 1), _machine_snap(4, 2))
    assert out == ["machine.gic.state.dist.ISPENDR[0]: 0 -> 4",
                   "memory at 0x40000000: 1 pages differ (0x40003000)"]


def test_inspect_summarises_the_machine():
    text = describe.render_inspect(describe.inspect(_machine_snap(4, 1)))
    assert "machine: 2 vCPUs, 256 MiB, console virtio, SVE on" in text
    assert "disk: /d.img (read-only)" in text
    assert "gic: gicv3, 128 interrupts, 2 SPIs enabled, 1 pending" in text
    assert "virtio-console on mmio 0xa000000: status 0xf, 1 of 2 queues ready" in text
    assert "virtio-vsock on mmio 0xa000200: status 0x7, 0 of 0 queues ready" in text
    assert "virtio device 42 on mmio 0xa000400: status 0x0, 0 of 0 queues ready" in text


def test_the_name_table_is_the_virtio_device_modules_by_their_device_ids():
    # every pyvmm/devices/virtio_X.py with a DEVICE_ID is "virtio-X", and the table has no other row
    found = {}
    for f in sorted(os.listdir(os.path.dirname(devices.__file__))):
        if f.startswith("virtio_") and f.endswith(".py"):
            module = importlib.import_module(f"pyvmm.devices.{f[:-3]}")
            if hasattr(module, "DEVICE_ID"):
                found[module.DEVICE_ID] = f[:-3].replace("_", "-")
    assert len(found) == 6 and describe.VIRTIO_NAMES == found

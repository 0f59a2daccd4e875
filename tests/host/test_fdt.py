"""The generated device tree (pyvmm's own pure-Python writer), decompiled
with dtc, read back with libfdt and compared byte for byte with what
libfdt's sequential writer makes of the same tree."""
import shutil
import subprocess

import pytest

from pyvmm.boot import fdt, layout
from pyvmm.devices.pl011 import Pl011
from pyvmm.devices.virtio_mmio import VirtioBackend, VirtioMmio
from pyvmm.memory import GuestMemory

try:
    import libfdt  # the test extra's pylibfdt, or Debian's python3-libfdt in the test machine
except ImportError:  # pragma: no cover - make venv installs it
    libfdt = None
needs_libfdt = pytest.mark.skipif(libfdt is None, reason="pylibfdt is needed for the cross-check "
                                  "(pip install -e '.[test]' or apt install python3-libfdt)")


def dtc_decompile(blob: bytes) -> str:
    dtc = shutil.which("dtc")
    assert dtc, "dtc is needed (apt install device-tree-compiler)"
    r = subprocess.run([dtc, "-I", "dtb", "-O", "dts", "-"], input=blob, capture_output=True, check=True)
    assert b"ERROR" not in r.stderr, r.stderr.decode()
    return r.stdout.decode()


def gic_node(ncpus):
    return (fdt.Node(f"intc@{layout.GICD_BASE:x}").prop("compatible", "arm,gic-v3").prop("#interrupt-cells", 3)
            .prop("interrupt-controller")
            .prop("reg", fdt.reg64((layout.GICD_BASE, layout.GICD_SIZE), (layout.GICR_BASE, layout.gicr_size(ncpus))))
            .prop("phandle", fdt.PHANDLE_GIC))


def machine_dtb(ncpus=2, initrd=(0x5F000000, 0x5F100000), virtio=1):
    uart = Pl011(layout.UART_BASE, layout.UART_SPI, lambda level: None, lambda b: None)
    mem = GuestMemory()
    devs = [uart.dt_node()]
    for n in range(virtio):
        base, spi = layout.virtio_slot(n)
        devs.append(VirtioMmio(base, spi, mem, lambda level: None, VirtioBackend()).dt_node())
    mpidrs = [0x80000000 | (i % 16) | ((i // 16) << 8) for i in range(ncpus)]
    return fdt.build(ram_size=512 << 20, mpidrs=mpidrs, gic=gic_node(ncpus), devices=devs,
                     bootargs="console=ttyAMA0 quiet", initrd=initrd, stdout_path=uart.dt_path)


def test_dtb_decompiles_and_has_every_node():
    dts = dtc_decompile(machine_dtb())
    for needle in ['compatible = "linux,dummy-virt"', 'bootargs = "console=ttyAMA0 quiet"',
                   "linux,initrd-start = <0x00 0x5f000000>", "linux,initrd-end = <0x00 0x5f100000>",
                   'stdout-path = "/pl011@9000000"', "memory@40000000", "reg = <0x00 0x40000000 0x00 0x20000000>",
                   "cpu@0 {", "cpu@1 {", 'enable-method = "psci"', 'method = "hvc"', 'arm,psci-0.2"',
                   'compatible = "arm,gic-v3"', "interrupt-controller;", "#interrupt-cells = <0x03>",
                   'compatible = "arm,armv8-timer"', "interrupts = <0x01 0x0d 0x04 0x01 0x0e 0x04 0x01 0x0b 0x04 0x01 0x0a 0x04>",
                   'compatible = "arm,pl011\\0arm,primecell"', "interrupts = <0x00 0x01 0x04>",
                   'clock-names = "uartclk\\0apb_pclk"', "virtio_mmio@a000000", 'compatible = "virtio,mmio"',
                   "interrupts = <0x00 0x10 0x01>", "dma-coherent;"]:
        assert needle in dts, needle


def _libfdt_dtb(root: fdt.Node) -> bytes:
    """The same tree written by libfdt's sequential writer (the reference)."""
    sw = libfdt.FdtSw()
    sw.finish_reservemap()

    def write(node):
        sw.begin_node(node.name)
        for name, value in node.props:
            sw.property(name, fdt._encode(value))
        for child in node.children:
            write(child)
        sw.end_node()
    write(root)
    f = sw.as_fdt()
    f.pack()
    return bytes(f.as_bytearray())


@needs_libfdt
@pytest.mark.parametrize("ncpus,virtio,initrd", [(1, 0, None), (2, 1, (0x5F000000, 0x5F100000)), (8, 4, None)])
def test_dtb_is_byte_for_byte_what_libfdt_writes(monkeypatch, ncpus, virtio, initrd):
    trees = []
    monkeypatch.setattr(fdt, "to_dtb", lambda root, real=fdt.to_dtb: trees.append(root) or real(root))
    ours = machine_dtb(ncpus=ncpus, initrd=initrd, virtio=virtio)
    assert ours == _libfdt_dtb(trees[0])


def test_shared_and_tail_property_names_are_stored_once():
    root = fdt.Node("").prop("#size-cells", 1)
    root.children += [fdt.Node("a").prop("size-cells", 2), fdt.Node("b").prop("#size-cells", 3)]
    blob = fdt.to_dtb(root)
    strings = blob[int.from_bytes(blob[12:16], "big"):]
    assert strings == b"#size-cells\0"  # "size-cells" is its tail
    dts = dtc_decompile(blob)
    assert "#size-cells = <0x01>" in dts and "\tsize-cells = <0x02>" in dts and "#size-cells = <0x03>" in dts


@needs_libfdt
def test_dtb_reads_back_with_libfdt():
    f = libfdt.Fdt(machine_dtb(ncpus=3))
    root = f.path_offset("/")
    assert f.getprop(root, "#address-cells").as_int32() == 2
    cpus = f.path_offset("/cpus")
    names = []
    node = f.first_subnode(cpus)
    while True:
        names.append(f.get_name(node))
        try:
            node = f.next_subnode(node)
        except libfdt.FdtException:
            break
    assert names == ["cpu@0", "cpu@1", "cpu@2"]
    gic = f.path_offset("/intc@8000000")
    assert f.get_phandle(gic) == fdt.PHANDLE_GIC
    reg = bytes(f.getprop(gic, "reg"))
    assert int.from_bytes(reg[24:32], "big") == 3 * layout.GICR_STRIDE


def test_no_initrd_no_initrd_properties():
    dts = dtc_decompile(machine_dtb(initrd=None, virtio=0))
    assert "linux,initrd-start" not in dts and "virtio_mmio" not in dts


def test_cpu_reg_is_mpidr_affinity():
    dts = dtc_decompile(machine_dtb(ncpus=17))
    assert "cpu@100 {" in dts  # vCPU 16: Aff1 = 1, Aff0 = 0
    assert "reg = <0x00 0x100>" in dts


def test_dtb_passes_dtc_checks_without_errors():
    dtc = shutil.which("dtc")
    r = subprocess.run([dtc, "-I", "dtb", "-O", "dtb", "-o", "/dev/null", "-"], input=machine_dtb(), capture_output=True)
    assert r.returncode == 0, r.stderr.decode()

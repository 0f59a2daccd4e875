"""A bare-metal guest, assembled from guests/baremetal/sve_add.s by a real
assembler, computes with SVE registers the VMM preset and reports through
MMIO; the VMM checks the reports, the registers and guest memory."""
import struct

import pytest

from pyvmm.arm64 import regs
from pyvmm._ffi import const
from pyvmm.machine.baremetal import RAM_BASE, BareMetal
from support import guestbuild

pytestmark = pytest.mark.kvm


def _lanes(vl_bytes, f):
    return [f(i) & 0xFFFFFFFFFFFFFFFF for i in range(vl_bytes // 8)]


def _pack(lanes):
    return struct.pack(f"<{len(lanes)}Q", *lanes).ljust(256, b"\0")


@pytest.mark.parametrize("max_bits", [128, 512, 2048])
def test_sve_payload_computes_with_preset_registers(kvm, max_bits):
    image = guestbuild.build("sve_add")
    with BareMetal(kvm) as bm:
        bm.load(image)
        bm.init_vcpu([const("KVM_ARM_VCPU_SVE")])
        v = bm.vcpu
        host = regs.vls_decode(v.get_one_reg(regs.SVE_VLS))
        vq = max_bits // 128
        if vq not in host:
            pytest.fail(f"test machine does not offer SVE {max_bits} (offers {[128 * q for q in host]})")
        v.set_one_reg(regs.SVE_VLS, regs.vls_encode(regs.vls_cut(host, vq)))
        v.arm_vcpu_finalize(4)
        # ZCR_EL1 resets to 0 (128 bits): the guest runs at LEN+1 VQs.
        v.set_reg(regs.ZCR_EL1, vq - 1)
        vl = 16 * vq
        z0 = _lanes(vl, lambda i: 0x1111111111111111 * (i + 1))
        z1 = _lanes(vl, lambda i: 0x0101010101010101 + i * 0x1000)
        v.set_one_reg(regs.sve_z(0), _pack(z0))
        v.set_one_reg(regs.sve_z(1), _pack(z1))
        bm.enter_at(RAM_BASE)
        out = bm.run()
        expected = [(a + b) & 0xFFFFFFFFFFFFFFFF for a, b in zip(z0, z1)]
        assert out.stopped_by == "done" and out.status == 0
        vl_seen, lane_sum, buf_addr = out.reports
        assert vl_seen == vl
        assert lane_sum == sum(expected) & 0xFFFFFFFFFFFFFFFF
        assert v.get_one_reg(regs.sve_z(2)) == _pack(expected)
        assert bm.mem.read(buf_addr, vl) == _pack(expected)[:vl]

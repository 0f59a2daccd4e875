// Register-page probe for tests/kvm/test_virtio_regpage.py: `pyvmm run
// --firmware ...` (serial console, virtio-rng in virtio-mmio slot 0 at
// 0x0a000000). Entered at EL1h, MMU off, position independent. Reads the
// device's identification registers, InterruptStatus READS times (counting
// the reads that differ from the first), writes Status = ACKNOWLEDGE and
// DeviceFeaturesSel = 1 and reads both effects back, then prints on the
// UART, one 16-digit hex number a line: MagicValue, Version, DeviceID,
// InterruptStatus, the number of differing InterruptStatus reads, Status
// after the write, DeviceFeatures after the select; then powers off.

        .equ    UART_DR, 0x09000000
        .equ    VIRTIO, 0x0a000000
        .equ    READS, 200

        .text
        .global _start
_start:
        movz    x0, #(VIRTIO >> 16), lsl #16
        movz    x20, #(UART_DR >> 16), lsl #16
        ldr     w21, [x0, #0x000]           // MagicValue
        ldr     w22, [x0, #0x004]           // Version
        ldr     w23, [x0, #0x008]           // DeviceID
        ldr     w24, [x0, #0x060]           // InterruptStatus, the first read
        mov     x25, #0                     // reads that differ from it
        mov     x2, #READS
1:      ldr     w1, [x0, #0x060]
        cmp     w1, w24
        cinc    x25, x25, ne
        subs    x2, x2, #1
        b.ne    1b
        mov     w1, #1
        str     w1, [x0, #0x070]            // Status = ACKNOWLEDGE (an exit to pyvmm)
        ldr     w26, [x0, #0x070]
        str     w1, [x0, #0x014]            // DeviceFeaturesSel = 1
        ldr     w27, [x0, #0x010]           // DeviceFeatures bits 32-63
        mov     x0, x21
        bl      print_hex
        mov     x0, x22
        bl      print_hex
        mov     x0, x23
        bl      print_hex
        mov     x0, x24
        bl      print_hex
        mov     x0, x25
        bl      print_hex
        mov     x0, x26
        bl      print_hex
        mov     x0, x27
        bl      print_hex
        ldr     x0, =0x84000008             // PSCI SYSTEM_OFF
        hvc     #0
        b       .

        .include "print_hex.inc"

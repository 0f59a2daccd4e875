// MMIO exit cost probe for bench/mmio_exits.py: `pyvmm run --firmware ...`
// (serial console, virtio-rng in virtio-mmio slot 0 at 0x0a000000). Entered
// at EL1h, MMU off, position independent. The three words after the first
// branch are patched by the bench: COUNT iterations, MODE (bit 0: read
// InterruptStatus, bit 1: write ACK to InterruptACK), ACK. The loop is timed
// with the virtual counter; the guest prints the elapsed ticks and the
// counter frequency in hex on the UART, one per line, and powers off.

        .equ    UART_DR, 0x09000000
        .equ    VIRTIO, 0x0a000000
        .equ    INTERRUPT_STATUS, 0x060
        .equ    INTERRUPT_ACK, 0x064

        .text
        .global _start
_start:
        b       1f
        .balign 8
count:  .quad   1000
mode:   .quad   3
ack:    .quad   1
1:      ldr     x2, count
        ldr     x6, mode
        ldr     x3, ack
        movz    x0, #(VIRTIO >> 16), lsl #16
        movz    x20, #(UART_DR >> 16), lsl #16
        isb
        mrs     x10, cntvct_el0
2:      cbz     x2, 4f
        tbz     x6, #0, 3f
        ldr     w1, [x0, #INTERRUPT_STATUS]
3:      tbz     x6, #1, 5f
        str     w3, [x0, #INTERRUPT_ACK]
5:      sub     x2, x2, #1
        b       2b
4:      isb
        mrs     x11, cntvct_el0
        sub     x0, x11, x10
        bl      print_hex
        mrs     x0, cntfrq_el0
        bl      print_hex
        ldr     x0, =0x84000008             // PSCI SYSTEM_OFF
        hvc     #0
        b       .

        .include "print_hex.inc"

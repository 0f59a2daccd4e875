// A hostile bare-metal guest for `pyvmm run --firmware ... --console virtio`
// (issue 14 #2; tests/kvm/test_hostile_guest.py). Entered at EL1h, MMU off,
// loaded at the start of RAM (0x40000000; the code is position independent).
//
// It sets up virtio-console (virtio-mmio slot 0 at 0x0a000000) by the book,
// then offers CHAINS chains on the transmit queue, each two descriptors of
// BUF_LEN bytes (the same buffer twice: 24 x 2 x 63 MiB = 3 GiB of output
// from a 64 MiB guest), notifies once, and powers off (PSCI SYSTEM_OFF).
// A VMM that gathers a notify's chains in host memory needs 3 GiB for it.

        .equ    VIRTIO, 0x0a000000
        .equ    CHAINS, 24
        .equ    BUF_LEN, (63 << 20)
        .equ    QSIZE, 64
        // virtio-mmio registers (virtio 1.2, 4.2.2)
        .equ    DRIVER_FEATURES, 0x020
        .equ    DRIVER_FEATURES_SEL, 0x024
        .equ    QUEUE_SEL, 0x030
        .equ    QUEUE_NUM, 0x038
        .equ    QUEUE_READY, 0x044
        .equ    QUEUE_NOTIFY, 0x050
        .equ    STATUS, 0x070
        .equ    QUEUE_DESC, 0x080
        .equ    QUEUE_DRIVER, 0x090
        .equ    QUEUE_DEVICE, 0x0a0

        .text
        .global _start
_start:
        adr     x20, _start                 // the start of RAM
        add     x21, x20, #0x10000          // descriptor table (16 bytes x QSIZE)
        add     x22, x20, #0x11000          // available ring
        add     x23, x20, #0x12000          // used ring
        add     x24, x20, #0x100000         // the buffer: RAM + 1 MiB, BUF_LEN bytes
        movz    x0, #(VIRTIO >> 16), lsl #16

        str     wzr, [x0, #STATUS]          // reset
        mov     w1, #3                      // ACKNOWLEDGE | DRIVER
        str     w1, [x0, #STATUS]
        mov     w1, #1
        str     w1, [x0, #DRIVER_FEATURES_SEL]
        str     w1, [x0, #DRIVER_FEATURES]  // VIRTIO_F_VERSION_1 (bit 32)
        mov     w1, #0xb                    // | FEATURES_OK
        str     w1, [x0, #STATUS]

        mov     w1, #1                      // queue 1: transmit
        str     w1, [x0, #QUEUE_SEL]
        mov     w1, #QSIZE
        str     w1, [x0, #QUEUE_NUM]
        str     w21, [x0, #QUEUE_DESC]
        lsr     x1, x21, #32
        str     w1, [x0, #QUEUE_DESC + 4]
        str     w22, [x0, #QUEUE_DRIVER]
        lsr     x1, x22, #32
        str     w1, [x0, #QUEUE_DRIVER + 4]
        str     w23, [x0, #QUEUE_DEVICE]
        lsr     x1, x23, #32
        str     w1, [x0, #QUEUE_DEVICE + 4]
        mov     w1, #1
        str     w1, [x0, #QUEUE_READY]
        mov     w1, #0xf                    // | DRIVER_OK
        str     w1, [x0, #STATUS]

        // chain i: descriptor 2i (NEXT -> 2i+1) and 2i+1, both the buffer;
        // available ring entry i = 2i
        ldr     w5, =BUF_LEN
        mov     x6, #0
        mov     x7, x21
1:      str     x24, [x7]                   // addr
        str     w5, [x7, #8]                // len
        mov     w8, #1                      // VIRTQ_DESC_F_NEXT
        strh    w8, [x7, #12]
        add     w9, w6, w6
        add     w9, w9, #1
        strh    w9, [x7, #14]               // next = 2i + 1
        str     x24, [x7, #16]
        str     w5, [x7, #24]
        strh    wzr, [x7, #28]
        strh    wzr, [x7, #30]
        add     x10, x22, #4
        add     x10, x10, x6, lsl #1
        add     w11, w6, w6
        strh    w11, [x10]                  // ring[i] = 2i
        add     x7, x7, #32
        add     x6, x6, #1
        cmp     x6, #CHAINS
        b.ne    1b
        strh    wzr, [x22]                  // available flags: interrupts wanted
        mov     w1, #CHAINS
        strh    w1, [x22, #2]               // available index
        dsb     sy

        mov     w1, #1
        str     w1, [x0, #QUEUE_NOTIFY]     // one notify for all of it

        ldr     x0, =0x84000008             // PSCI SYSTEM_OFF
        hvc     #0
        b       .
        .ltorg

// Bare-metal SVE payload that computes over many exits, for snapshot tests.
//
// The VMM presets Z0, Z1 (64-bit lanes) and ZCR_EL1.LEN. Sixteen times:
//   Z2 += Z0; Z0 += Z1; count += 1; store count to `counter` in RAM;
//   report count through the mailbox (one MMIO exit per iteration).
// Then it reports the sum of Z2's lanes and writes 0 to the done register.
// Mailbox: 0x0a000000 (+0 report, +8 done), see pyvmm/machine/baremetal.py.

        .text
        .global _start
_start:
        mrs     x0, cpacr_el1
        orr     x0, x0, #(3 << 20)          // FPEN
        orr     x0, x0, #(3 << 16)          // ZEN
        msr     cpacr_el1, x0
        isb

        movz    x10, #0x0a00, lsl #16       // mailbox
        adr     x11, counter
        ptrue   p0.d
        mov     x5, #0
loop:
        add     z2.d, z2.d, z0.d
        add     z0.d, z0.d, z1.d
        add     x5, x5, #1
        str     x5, [x11]
        str     x5, [x10]
        cmp     x5, #16
        b.ne    loop

        uaddv   d3, p0, z2.d
        fmov    x3, d3
        str     x3, [x10]
        str     xzr, [x10, #8]
1:      wfi
        b       1b

        .balign 8
counter:
        .quad   0

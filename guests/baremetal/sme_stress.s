// SME stress payload (entered at EL1h, MMU off) for the kernel's context-switch test.
//
// Preset by the VMM: x0 = vCPU-specific seed byte, SMCR_EL1 (LEN = max, FA64, EZT0).
// Loop until the 64-bit word at RAM+0x8000 is non-zero:
//   SMSTART; b = seed + iteration; fill every ZA row (ZA0.B horizontal slices),
//   ZT0 and streaming Z1 with patterns of b; report the iteration (an MMIO exit,
//   during which the VMM moves the vCPU thread to the other host CPU); read
//   everything back and count mismatching rows/registers; SMSTOP.
// Then report the mismatch count, and write it to the done register.
// Mailbox: 0x0a000000 (+0 report, +8 done), see pyvmm/machine/baremetal.py.

        .arch   armv9-a+sme2
        .text
        .global _start
_start:
        mrs     x9, cpacr_el1
        orr     x9, x9, #(3 << 20)          // FPEN
        orr     x9, x9, #(3 << 16)          // ZEN
        orr     x9, x9, #(3 << 24)          // SMEN
        msr     cpacr_el1, x9
        isb

        movz    x10, #0x0a00, lsl #16       // mailbox
        movz    x11, #0x8000, lsl #16       // RAM base 0x80000000
        add     x13, x11, #0x8000           // stop flag
        add     x14, x11, #0x9000           // ZT0 source buffer (64 bytes)
        add     x15, x11, #0xa000           // ZT0 readback buffer (64 bytes)
        and     x19, x0, #0xff              // seed
        mov     x20, #0                     // iteration
        mov     x21, #0                     // mismatches

iteration:
        smstart
        add     w5, w19, w20                // b = seed + iteration (low byte used)
        and     w5, w5, #0xff
        mov     w7, #0x5a
        eor     w6, w5, w7                  // pattern for Z1
        ptrue   p0.b
        dup     z0.b, w5
        dup     z1.b, w6
        rdsvl   x22, #1                     // SVL in bytes = number of ZA rows

        mov     w12, #0                     // fill ZA rows
fill:   mova    za0h.b[w12, 0], p0/m, z0.b
        add     w12, w12, #1
        cmp     x12, x22
        b.lo    fill

        mov     x1, #0                      // ZT0 source: byte k = b + k
fillzt: add     w2, w5, w1
        strb    w2, [x14, x1]
        add     x1, x1, #1
        cmp     x1, #64
        b.lo    fillzt
        ldr     zt0, [x14]

        add     x20, x20, #1
        str     x20, [x10]                  // exit: the VMM migrates us here

        mov     w12, #0                     // check ZA rows
check:  mova    z2.b, p0/m, za0h.b[w12, 0]
        cmpne   p1.b, p0/z, z2.b, z0.b
        b.none  1f
        add     x21, x21, #1
1:      add     w12, w12, #1
        cmp     x12, x22
        b.lo    check

        dup     z3.b, w6                    // check streaming Z1
        cmpne   p1.b, p0/z, z1.b, z3.b
        b.none  2f
        add     x21, x21, #1
2:
        str     zt0, [x15]                  // check ZT0
        mov     x1, #0
chkzt:  ldrb    w2, [x14, x1]
        ldrb    w3, [x15, x1]
        cmp     w2, w3
        b.eq    3f
        add     x21, x21, #1
3:      add     x1, x1, #1
        cmp     x1, #64
        b.lo    chkzt

        mrs     x2, svcr                    // SVCR must still be SM=1, ZA=1
        cmp     x2, #3
        b.eq    4f
        add     x21, x21, #1
4:      smstop

        ldr     x2, [x13]
        cbz     x2, iteration

        str     x21, [x10]                  // report mismatches
        str     x21, [x10, #8]              // done, status = mismatches
5:      wfi
        b       5b

// Bare-metal SME state payload for pyvmm's KVM tests (entered at EL1h, MMU off).
//
// The VMM sets, before the first run:
//   x0 = flags: bit 0 SM, bit 1 ZA (the SVCR state to test), bit 2 the vCPU has SVE,
//        bit 3 FA64 (streaming FFR), bit 4 SME2 (ZT0)
//   x1 = seed A (the guest's fill pattern), x2 = seed B (the pattern the VMM writes)
//
// Pattern: byte k of register slot s with seed S is (S + 13*s + 7*k) mod 256; slots:
// Z/V n -> n, P n -> 32 + n, ZT0 -> 50, ZA row r -> 64 + r. FFR (which WRFFR only
// takes monotonic) is its first (S mod PL) + 1 bytes 0xff, then zeros (PL = VL/64 bytes).
//
// The payload:
//   1. enables FP, SVE and SME at EL1 (CPACR_EL1 FPEN, ZEN, SMEN), sets SMCR_EL1.LEN
//      and ZCR_EL1.LEN to the maximum (FA64 and EZT0 per the flags),
//   2. writes SVCR (SMSTART SM and/or ZA), reports SVL bytes (RDSVL) and the bytes of
//      a Z register in this mode (0 when only V registers exist: SME only, SM = 0),
//   3. fills Z0-Z31 (or V0-V31), P0-P15, FFR, ZA rows and ZT0 with pattern A,
//   4. writes 0x100 to the done register: a checkpoint where the VMM reads and
//      rewrites the state (with pattern B), then runs the vCPU again,
//   5. reports SVCR as it finds it, then checks every register against pattern B,
//      reports the number of mismatching bytes and writes it (0 = success) to done.
// Mailbox: 0x0a000000 (+0 report, +8 done), see pyvmm/machine/baremetal.py.

        .arch_extension sme2            // ZT0 (binutils >= 2.41: assembled in the test machine)

        .equ    BUF_Z,   0x80100000     // 32 x VL bytes (8 KiB at 2048 bits)
        .equ    BUF_P,   0x80102000     // 16 x VL/8
        .equ    BUF_FFR, 0x80102400
        .equ    BUF_ZT,  0x80102800     // 64 bytes
        .equ    BUF_ZA,  0x80103000     // one ZA row (SVL bytes)
        .equ    CHECKPOINT, 0x100

        .text
        .global _start
_start:
        mov     x19, x0                     // flags
        and     w20, w1, #0xff              // seed A
        and     w21, w2, #0xff              // seed B
        movz    x28, #0x0a00, lsl #16       // mailbox

        mrs     x0, cpacr_el1
        orr     x0, x0, #(3 << 20)          // FPEN
        orr     x0, x0, #(3 << 16)          // ZEN
        orr     x0, x0, #(3 << 24)          // SMEN
        msr     cpacr_el1, x0
        isb

        mov     x0, #15                     // SMCR_EL1.LEN: as long as allowed
        tbz     x19, #3, 1f
        orr     x0, x0, #(1 << 31)          // FA64
1:      tbz     x19, #4, 1f
        orr     x0, x0, #(1 << 30)          // EZT0
1:      msr     smcr_el1, x0
        tbz     x19, #2, 1f
        mov     x0, #15
        msr     zcr_el1, x0                 // ZCR_EL1.LEN: as long as allowed
1:      isb

        and     x0, x19, #3
        msr     svcr, x0                    // SM = bit 0, ZA = bit 1
        isb

        rdsvl   x22, #1                     // x22 = SVL in bytes
        str     x22, [x28]
        mov     x23, #0                     // x23 = bytes of a Z register in this mode
        tbz     x19, #0, 1f
        mov     x23, x22                    // streaming: SVL
        b       2f
1:      tbz     x19, #2, 2f
        rdvl    x23, #1                     // non-streaming with SVE: the SVE VL
2:      str     x23, [x28]
        lsr     x24, x23, #3                // x24 = bytes of a P register / FFR

        mov     w25, w20
        bl      fill_all

        mov     x0, #CHECKPOINT
        str     x0, [x28, #8]               // the VMM reads, then writes pattern B

        mrs     x0, svcr
        str     x0, [x28]
        mov     w25, w21
        mov     x26, #0                     // mismatch count
        bl      check_all
        str     x26, [x28]
        str     x26, [x28, #8]              // done: 0 = every byte as expected
1:      wfi
        b       1b

// ---- which registers exist (mirrors the ABI page §5 for the guest's own view) ----
// has_ffr: SM = 0 with SVE, or SM = 1 with FA64. Result in x0.
has_ffr:
        tbnz    x19, #0, 1f
        ubfx    x0, x19, #2, #1
        ret
1:      ubfx    x0, x19, #3, #1
        ret

// ---- pattern helpers ----
// gen: x0 = dst, x1 = length, w2 = start value. Byte k = start + 7k. Clobbers x0-x2.
gen:
        cbz     x1, 2f
1:      strb    w2, [x0], #1
        add     w2, w2, #7
        subs    x1, x1, #1
        b.ne    1b
2:      ret

// check: like gen but compares; adds mismatching bytes to x26. Clobbers x0-x4.
check:
        cbz     x1, 2f
1:      ldrb    w3, [x0], #1
        and     w4, w2, #0xff
        cmp     w3, w4
        cinc    x26, x26, ne
        add     w2, w2, #7
        subs    x1, x1, #1
        b.ne    1b
2:      ret

// slot_start: w2 = seed (w25) + 13 * slot (x8). Clobbers w2, w9.
slot_start:
        mov     w9, #13
        madd    w2, w8, w9, w25
        ret

// each_slot: x5 = buffer, x6 = count, x7 = length, x8 = first slot, x10 = gen or check.
// Clobbers x0-x9, x11.
each_slot:
        mov     x11, x30
1:      bl      slot_start
        mov     x0, x5
        mov     x1, x7
        blr     x10
        add     x5, x5, x7
        add     x8, x8, #1
        subs    x6, x6, #1
        b.ne    1b
        mov     x30, x11
        ret

// ffr_bytes: x0 = dst, x1 = PL bytes; first (seed mod PL) + 1 bytes 0xff, rest 0.
ffr_gen:
        udiv    x3, x25, x1
        msub    x3, x3, x1, x25
        add     x3, x3, #1
        mov     x4, #0
1:      cmp     x4, x3
        csetm   w2, lo
        strb    w2, [x0, x4]
        add     x4, x4, #1
        cmp     x4, x1
        b.lo    1b
        ret

ffr_check:
        udiv    x3, x25, x1
        msub    x3, x3, x1, x25
        add     x3, x3, #1
        mov     x4, #0
1:      cmp     x4, x3
        csetm   w2, lo
        and     w2, w2, #0xff
        ldrb    w5, [x0, x4]
        cmp     w5, w2
        cinc    x26, x26, ne
        add     x4, x4, #1
        cmp     x4, x1
        b.lo    1b
        ret

// ---- fill with the pattern of seed w25 ----
fill_all:
        mov     x27, x30
        adr     x10, gen
        cbnz    x23, 1f
        // V0-V31 (SME only, SM = 0)
        ldr     x5, =BUF_Z
        mov     x6, #32
        mov     x7, #16
        mov     x8, #0
        bl      each_slot
        ldr     x0, =BUF_Z
        .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
        ldr     q\n, [x0, #(16 * \n)]
        .endr
        b       3f
1:      // Z0-Z31
        ldr     x5, =BUF_Z
        mov     x6, #32
        mov     x7, x23
        mov     x8, #0
        bl      each_slot
        ldr     x0, =BUF_Z
        .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
        ldr     z\n, [x0, #\n, mul vl]
        .endr
        // FFR (through P0, before P0 gets its own value)
        bl      has_ffr
        cbz     x0, 2f
        ldr     x0, =BUF_FFR
        mov     x1, x24
        bl      ffr_gen
        ldr     x0, =BUF_FFR
        ldr     p0, [x0]
        wrffr   p0.b
2:      // P0-P15
        ldr     x5, =BUF_P
        mov     x6, #16
        mov     x7, x24
        mov     x8, #32
        bl      each_slot
        ldr     x0, =BUF_P
        .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
        ldr     p\n, [x0, #\n, mul vl]
        .endr
3:      // ZA rows and ZT0, when ZA is on
        tbz     x19, #1, 5f
        mov     x13, #0
4:      ldr     x0, =BUF_ZA
        mov     x1, x22
        add     x8, x13, #64
        bl      slot_start
        bl      gen
        mov     w12, w13
        ldr     x0, =BUF_ZA
        ldr     za[w12, 0], [x0]
        add     x13, x13, #1
        cmp     x13, x22
        b.lo    4b
        tbz     x19, #4, 5f
        ldr     x0, =BUF_ZT
        mov     x1, #64
        mov     x8, #50
        bl      slot_start
        bl      gen
        ldr     x0, =BUF_ZT
        ldr     zt0, [x0]
5:      mov     x30, x27
        ret

// ---- compare with the pattern of seed w25, counting into x26 ----
check_all:
        mov     x27, x30
        adr     x10, check
        cbnz    x23, 1f
        ldr     x0, =BUF_Z
        .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
        str     q\n, [x0, #(16 * \n)]
        .endr
        ldr     x5, =BUF_Z
        mov     x6, #32
        mov     x7, #16
        mov     x8, #0
        bl      each_slot
        b       3f
1:      ldr     x0, =BUF_Z
        .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
        str     z\n, [x0, #\n, mul vl]
        .endr
        ldr     x5, =BUF_Z
        mov     x6, #32
        mov     x7, x23
        mov     x8, #0
        bl      each_slot
        ldr     x0, =BUF_P
        .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
        str     p\n, [x0, #\n, mul vl]
        .endr
        ldr     x5, =BUF_P
        mov     x6, #16
        mov     x7, x24
        mov     x8, #32
        bl      each_slot
        bl      has_ffr
        cbz     x0, 3f
        rdffr   p0.b
        ldr     x0, =BUF_FFR
        str     p0, [x0]
        ldr     x0, =BUF_FFR
        mov     x1, x24
        bl      ffr_check
3:      tbz     x19, #1, 5f
        mov     x13, #0
4:      mov     w12, w13
        ldr     x0, =BUF_ZA
        str     za[w12, 0], [x0]
        ldr     x0, =BUF_ZA
        mov     x1, x22
        add     x8, x13, #64
        bl      slot_start
        bl      check
        add     x13, x13, #1
        cmp     x13, x22
        b.lo    4b
        tbz     x19, #4, 5f
        ldr     x0, =BUF_ZT
        str     zt0, [x0]
        ldr     x0, =BUF_ZT
        mov     x1, #64
        mov     x8, #50
        bl      slot_start
        bl      check
5:      mov     x30, x27
        ret

        .ltorg

// A Linux user program that keeps SME state live across scheduling: ZA row 0,
// streaming Z0, ZT0 and TPIDR2_EL0 are loaded with a pattern, then for each
// of N iterations it yields the CPU (sched_yield leaves streaming mode but
// keeps ZA), re-enters streaming mode, spins (to be preempted), and checks
// that nothing changed. exit(0) when all iterations pass, exit(1) at the
// first mismatch. Static, no libc: system calls only.
// Used by tests/kvm/test_sme_stress.py on the test machine's SME kernel and
// inside a Linux guest booted by pyvmm.

        .arch   armv9-a+sme2
        .text
        .global _start
_start:
        adr     x19, pattern
        adr     x20, readback
        movz    x24, #0x1234
        movk    x24, #0xabcd, lsl #16
        movk    x24, #0x5a5a, lsl #48
        msr     tpidr2_el0, x24

        mov     x1, #0                      // pattern byte k = 13k + 7
1:      mov     x2, #13
        mul     x2, x1, x2
        add     x2, x2, #7
        strb    w2, [x19, x1]
        add     x1, x1, #1
        cmp     x1, #256
        b.lo    1b

        smstart
        rdsvl   x22, #1
        mov     w12, #0
        ldr     za[w12, 0], [x19]
        ldr     zt0, [x19]
        movz    x23, #2000                  // iterations

loop:   mov     x8, #124                    // sched_yield
        svc     #0
        smstart sm
        ldr     z0, [x19]
        movz    x9, #0x8000
2:      subs    x9, x9, #1
        b.ne    2b

        mov     w12, #0
        str     za[w12, 0], [x20]
        add     x3, x20, #256
        str     z0, [x3]
        add     x4, x20, #512
        str     zt0, [x4]

        mov     x1, #0                      // ZA row 0 and Z0: SVL bytes
3:      ldrb    w5, [x19, x1]
        ldrb    w6, [x20, x1]
        cmp     w5, w6
        b.ne    fail
        ldrb    w6, [x3, x1]
        cmp     w5, w6
        b.ne    fail
        add     x1, x1, #1
        cmp     x1, x22
        b.lo    3b
        mov     x1, #0                      // ZT0: 64 bytes
4:      ldrb    w5, [x19, x1]
        ldrb    w6, [x4, x1]
        cmp     w5, w6
        b.ne    fail
        add     x1, x1, #1
        cmp     x1, #64
        b.lo    4b
        mrs     x0, tpidr2_el0
        cmp     x0, x24
        b.ne    fail
        mrs     x0, svcr
        cmp     x0, #3
        b.ne    fail
        subs    x23, x23, #1
        b.ne    loop

        smstop
        mov     x0, #0
        mov     x8, #93                     // exit
        svc     #0
fail:   smstop
        mov     x0, #1
        mov     x8, #93
        svc     #0

        .bss
        .balign 256
pattern:  .skip 256
readback: .skip 1024

// Which optional features a `pyvmm run --firmware` guest has (issue 14: SME,
// PMU and pointer authentication on by default). Entered at EL1h, MMU off,
// position independent. For each probe it executes one instruction that
// UNDEFs without the feature and prints one character through the PL011:
//   SME   msr smcr_el1      'S' then the streaming VL as 'A' + SVL/16 bytes
//         smstart           (B = 128 bits ... Q = 2048 bits), or 'U'. SMCR_EL1.LEN
//                           resets to 0 (SVL 128), so the probe first asks for the
//                           largest length (LEN = 15): what it reads back is the
//                           largest SVL the vCPU's SME_VLS allows.
//   PMU   mrs pmcr_el0      'P', or 'U'
//   pauth pacga             'G', or 'U'
// then "\n" and PSCI SYSTEM_OFF. The UNDEF handler prints 'U' and skips the
// instruction.

        .equ    UART_DR, 0x09000000

        .text
        .global _start
_start:
        adr     x0, vectors
        msr     vbar_el1, x0
        mrs     x0, cpacr_el1
        orr     x0, x0, #(3 << 24)          // SMEN: no SME traps
        orr     x0, x0, #(3 << 20)          // FPEN: no FP/SIMD traps
        msr     cpacr_el1, x0
        isb
        movz    x20, #(UART_DR >> 16), lsl #16

        mov     x21, #0
        mov     x1, #0xf
        msr     S3_0_C1_C2_6, x1            // SMCR_EL1.LEN = 15 (UNDEFs without SME)
        isb
        cbnz    x21, 1f
        smstart
        cbnz    x21, 1f
        mov     w1, #'S'
        str     w1, [x20]
        rdsvl   x1, #1                      // streaming VL in bytes
        lsr     x1, x1, #4
        add     w1, w1, #'A'
        str     w1, [x20]
        smstop
1:
        mov     x21, #0
        mrs     x1, pmcr_el0
        cbnz    x21, 2f
        mov     w1, #'P'
        str     w1, [x20]
2:
        mov     x21, #0
        pacga   x1, x2, x3
        cbnz    x21, 3f
        mov     w1, #'G'
        str     w1, [x20]
3:
        mov     w1, #'\n'
        str     w1, [x20]
        ldr     x0, =0x84000008             // PSCI SYSTEM_OFF
        hvc     #0
        b       .
        .ltorg

        .balign 0x800
vectors:
        .skip   0x200                       // current EL with SP_EL0: unused
undef:                                      // current EL with SP_ELx, synchronous
        mov     x21, #1
        mov     w9, #'U'
        str     w9, [x20]
        mrs     x9, elr_el1
        add     x9, x9, #4
        msr     elr_el1, x9
        eret

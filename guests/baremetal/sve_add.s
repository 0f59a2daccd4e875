// Bare-metal SVE payload for pyvmm's KVM tests (entered at EL1h, MMU off).
//
// The VMM presets Z0 and Z1 (64-bit lanes) and ZCR_EL1.LEN. This payload:
//   1. enables FP/SIMD and SVE at EL1 (CPACR_EL1.FPEN = ZEN = 0b11),
//   2. reports the vector length in bytes (RDVL),
//   3. computes Z2 = Z0 + Z1 (64-bit lanes) and reports the sum of Z2's lanes,
//   4. stores Z2 to the buffer at `result` and reports its address,
//   5. writes 0 to the mailbox's done register.
// Mailbox: 0x0a000000 (+0 report, +8 done), see pyvmm/machine/baremetal.py.

        .text
        .global _start
_start:
        mrs     x0, cpacr_el1
        orr     x0, x0, #(3 << 20)          // FPEN: no FP/SIMD traps at EL0/EL1
        orr     x0, x0, #(3 << 16)          // ZEN: no SVE traps at EL0/EL1
        msr     cpacr_el1, x0
        isb

        movz    x10, #0x0a00, lsl #16       // mailbox base 0x0a000000

        rdvl    x1, #1                      // vector length in bytes
        str     x1, [x10]

        ptrue   p0.d
        add     z2.d, z0.d, z1.d
        uaddv   d3, p0, z2.d
        fmov    x3, d3
        str     x3, [x10]

        adr     x4, result
        st1d    {z2.d}, p0, [x4]
        str     x4, [x10]

        str     xzr, [x10, #8]              // done, status 0
1:      wfi
        b       1b

        .balign 256
result:
        .space  256

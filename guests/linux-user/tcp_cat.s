// A Linux user program for the TCP benchmark (bench/data_planes.py):
// `tcp_cat PORT` connects a TCP stream to 10.78.0.1:PORT (the host end of
// the benchmark's tap) and sends everything it reads from stdin, in reads
// of up to 64 KiB; `tcp_cat PORT MIB` sends MIB MiB of zeros instead, in
// writes of 64 KiB (no pipe, no reader: only the socket's work). Then it
// shuts the sending side down and copies what the host sends back to
// stdout until the host closes. Unlike `dd | busybox nc` (about 1 KiB a
// write, so about one small packet each), every write hands the socket
// 64 KiB. exit(0) on success, exit(1) on bad arguments or any failed
// system call. Static, no libc: system calls only (arm64: number in x8,
// result in x0).

        .text
        .global _start
_start:
        ldr     x0, [sp]                    // argc: 2 or 3
        sub     x21, x0, #2                 // x21: 1 = send zeros, 0 = send stdin
        cmp     x21, #1
        b.hi    fail
        mov     x20, #0                     // 64 KiB blocks of zeros left to send
        cbz     x21, 1f
        ldr     x1, [sp, #24]               // argv[2]: MiB
        bl      number
        cbz     x0, fail
        lsl     x20, x0, #4
1:      ldr     x1, [sp, #16]               // argv[1]: port
        bl      number
        cbz     x0, fail
        cmp     x0, #0x10000
        b.hs    fail
        rev16   w0, w0                      // network byte order
        ldr     x1, =addr
        strh    w0, [x1, #2]

        mov     x0, #2                      // socket(AF_INET, SOCK_STREAM, 0)
        mov     x1, #1
        mov     x2, #0
        mov     x8, #198
        svc     #0
        cmp     x0, #0
        b.lt    fail
        mov     x19, x0
        ldr     x1, =addr                   // connect(fd, &sockaddr_in, 16)
        mov     x2, #16
        mov     x8, #203
        svc     #0
        cmp     x0, #0
        b.lt    fail

send:   cbz     x21, readin
        cbz     x20, sent                   // zeros: the next 64 KiB block
        sub     x20, x20, #1
        ldr     x1, =buf
        mov     x2, #0x10000
        b       write
        .include "stream.inc"

        .text
// number: the decimal string at x1 (NUL-terminated) in x0; 0 when it is
// empty, has a non-digit or exceeds 32 bits
number: mov     x0, #0
        mov     x4, #10
        ldrb    w3, [x1]
        cbz     w3, 9f
8:      ldrb    w3, [x1], #1
        cbz     w3, 7f
        sub     w3, w3, #'0'
        cmp     w3, #9
        b.hi    9f
        madd    x0, x0, x4, x3
        lsr     x5, x0, #32
        cbnz    x5, 9f
        b       8b
7:      ret
9:      mov     x0, #0
        ret
        .ltorg

        .data
        .align  3
addr:   .hword  2, 0                        // struct sockaddr_in: AF_INET, port (set above)
        .byte   10, 78, 0, 1                // 10.78.0.1
        .quad   0

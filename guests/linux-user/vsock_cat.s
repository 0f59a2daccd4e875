// A Linux user program for the virtio-vsock tests: connects a vsock stream
// to the host (CID 2) on port 5123, sends everything it reads from stdin,
// shuts the sending side down, then copies what the host sends back to
// stdout until the host closes. exit(0) on success, exit(1) on any failed
// system call. Static, no libc: system calls only (arm64: number in x8,
// result in x0, every other register preserved).

        .text
        .global _start
_start:
        mov     x0, #40                     // socket(AF_VSOCK, SOCK_STREAM, 0)
        mov     x1, #1
        mov     x2, #0
        mov     x8, #198
        svc     #0
        cmp     x0, #0
        b.lt    fail
        mov     x19, x0
        adr     x1, addr                    // connect(fd, &sockaddr_vm, 16)
        mov     x2, #16
        mov     x8, #203
        svc     #0
        cmp     x0, #0
        b.lt    fail

send:                                       // stdin's bytes, then the host's back
        .include "stream.inc"

        .text
        .align  3
addr:   .hword  40, 0                       // struct sockaddr_vm: family AF_VSOCK, reserved
        .word   5123                        // port
        .word   2                           // cid: VMADDR_CID_HOST
        .byte   0, 0, 0, 0                  // flags, zero

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

send:   mov     x0, #0                      // read(stdin, buf, 64 KiB)
        ldr     x1, =buf
        mov     x2, #0x10000
        mov     x8, #63
        svc     #0
        cmp     x0, #0
        b.lt    fail
        b.eq    sent
        mov     x2, x0
1:      mov     x0, x19                     // write(sock, ...) until all is out
        mov     x8, #64
        svc     #0
        cmp     x0, #0
        b.le    fail
        add     x1, x1, x0
        sub     x2, x2, x0
        cbnz    x2, 1b
        b       send

sent:   mov     x0, x19                     // shutdown(sock, SHUT_WR)
        mov     x1, #1
        mov     x8, #210
        svc     #0

recv:   mov     x0, x19                     // read(sock, buf, 64 KiB)
        ldr     x1, =buf
        mov     x2, #0x10000
        mov     x8, #63
        svc     #0
        cmp     x0, #0
        b.lt    fail
        b.eq    done
        mov     x2, x0
2:      mov     x0, #1                      // write(stdout, ...) until all is out
        mov     x8, #64
        svc     #0
        cmp     x0, #0
        b.le    fail
        add     x1, x1, x0
        sub     x2, x2, x0
        cbnz    x2, 2b
        b       recv

done:   mov     x0, #0
        mov     x8, #93                     // exit(0)
        svc     #0
fail:   mov     x0, #1
        mov     x8, #93                     // exit(1)
        svc     #0

        .align  3
addr:   .hword  40, 0                       // struct sockaddr_vm: family AF_VSOCK, reserved
        .word   5123                        // port
        .word   2                           // cid: VMADDR_CID_HOST
        .byte   0, 0, 0, 0                  // flags, zero
        .ltorg

        .bss
        .align  12
buf:    .skip   0x10000

"""PL011 model: registers Linux's amba-pl011 driver and earlycon use, IDs, interrupts."""
from hypothesis import given, settings, strategies as st

from pyvmm.devices import pl011 as P
from support.uart import make_uart


def r32(u, off):
    return int.from_bytes(u.read(off, 4), "little")


def w32(u, off, v):
    u.write(off, v.to_bytes(4, "little"))


def test_primecell_ids():
    u, _, _ = make_uart()
    ids = [r32(u, 0xFE0 + 4 * i) for i in range(8)]
    assert ids == [0x11, 0x10, 0x34, 0x00, 0x0D, 0xF0, 0x05, 0xB1]


def test_transmit_goes_out_and_fifo_is_always_empty():
    u, _, out = make_uart()
    for ch in b"hi\n":
        assert r32(u, P.FR) & P.FR_TXFE and not r32(u, P.FR) & P.FR_TXFF
        w32(u, P.DR, ch)
    assert b"".join(out) == b"hi\n" and u.tx_bytes == 3


def test_receive_waits_for_the_driver_then_interrupts():
    u, levels, _ = make_uart()
    assert r32(u, P.FR) & P.FR_RXFE
    assert u.receive(b"ab") == 0  # the port is not open yet: the host keeps it
    w32(u, P.IMSC, P.INT_RX | P.INT_RT)
    assert levels == []
    assert u.receive(b"ab") == 2
    assert levels == [True]
    assert r32(u, P.MIS) == P.INT_RX | P.INT_RT
    assert r32(u, P.DR) == ord("a")
    assert r32(u, P.DR) == ord("b")
    assert levels == [True, False]
    assert r32(u, P.FR) & P.FR_RXFE


def test_tx_interrupt_and_clear():
    u, levels, _ = make_uart()
    w32(u, P.IMSC, P.INT_TX)
    w32(u, P.DR, ord("x"))
    assert levels == [True] and r32(u, P.RIS) & P.INT_TX
    w32(u, P.ICR, P.INT_TX)
    assert levels == [True, False]


def test_control_registers_keep_values():
    u, _, _ = make_uart()
    assert r32(u, P.CR) == 0x300 and r32(u, P.IFLS) == 0x12
    for off, v in ((P.IBRD, 13), (P.FBRD, 1), (P.LCR_H, 0x70), (P.CR, 0x301)):
        w32(u, off, v)
        assert r32(u, off) == v
    assert len(u.read(P.FR, 2)) == 2


def test_input_queue_is_bounded():
    u, _, _ = make_uart()
    w32(u, P.IMSC, P.INT_RX)
    assert u.receive(bytes(P.RX_QUEUE_MAX + 10)) == P.RX_QUEUE_MAX
    assert u.receive(b"x") == 0


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["r", "w", "in"]), st.integers(0, 0xFFF), st.integers(0, 0xFFFFFFFF)),
                max_size=40))
def test_any_access_sequence_keeps_the_line_consistent(ops):
    u, levels, _ = make_uart()
    for kind, off, val in ops:
        off &= ~3
        if kind == "r":
            assert len(u.read(off, 4)) == 4
        elif kind == "w":
            w32(u, off, val)
        else:
            u.receive(bytes([val & 0xFF]))
        expected = bool(u.ris & u.regs[P.IMSC])
        assert (levels[-1] if levels else False) == expected
    # the line only ever toggles
    assert all(a != b for a, b in zip(levels, levels[1:]))


def test_fifo_reports_full_once_per_burst():
    u, _, out = make_uart()
    for i in range(P.TX_BURST):
        assert not r32(u, P.FR) & P.FR_TXFF
        w32(u, P.DR, 0x41)
    assert r32(u, P.FR) & P.FR_TXFF  # once: the driver switches to the TX interrupt
    assert not r32(u, P.FR) & P.FR_TXFF
    assert len(out) == P.TX_BURST

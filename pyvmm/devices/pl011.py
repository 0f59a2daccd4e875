"""ARM PrimeCell UART (PL011), as Linux's amba-pl011 driver and earlycon use it.

Register map and bits: ARM DDI 0183 (PrimeCell UART PL011 TRM), section 3.
Transmission is instantaneous, so the TX FIFO is always empty (FR.TXFE) and
the TX interrupt is raised after every write to DR. Received bytes wait in a
host-side queue; FR.RXFE says whether one is there; RX and RX-timeout
interrupts are raised while it is non-empty.
"""
from __future__ import annotations

from .. import _threads

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time; type checkers read True)
if TYPE_CHECKING:
    from collections import deque
    from typing import Callable, Deque, Dict
else:
    from _collections import deque  # collections' C core, as threading takes it (start-up time: no collections)

from ..boot import fdt

DR, RSR_ECR, FR, ILPR, IBRD, FBRD, LCR_H, CR, IFLS, IMSC, RIS, MIS, ICR, DMACR = (
    0x000, 0x004, 0x018, 0x020, 0x024, 0x028, 0x02C, 0x030, 0x034, 0x038, 0x03C, 0x040, 0x044, 0x048)
ID_BASE = 0xFE0
# UARTPeriphID0-3, UARTPCellID0-3 (TRM 3.3.14-15): part 0x011, designer ARM, rev r1p5.
ID_BYTES = bytes((0x11, 0x10, 0x34, 0x00, 0x0D, 0xF0, 0x05, 0xB1))

FR_RXFE, FR_TXFF, FR_RXFF, FR_TXFE = 1 << 4, 1 << 5, 1 << 6, 1 << 7
INT_RX, INT_TX, INT_RT = 1 << 4, 1 << 5, 1 << 6
INT_ALL = 0x7FF
LCR_H_FEN = 1 << 4
FIFO_DEPTH = 32
# After this many writes to DR, one read of FR reports the TX FIFO full. Linux's
# driver then stops polling FR before each byte (two exits per byte) and
# continues from the TX interrupt, which writes half a FIFO per pass without
# reading FR (amba-pl011.c pl011_tx_chars).
TX_BURST = FIFO_DEPTH // 2
RX_QUEUE_MAX = 64 * 1024  # host-side input kept while the guest is not reading

SIZE = 0x1000


class Pl011:
    def __init__(self, base: int, spi: int, raise_irq: Callable[[bool], None],
                 output: Callable[[bytes], None]):
        self.base, self.spi = base, spi
        self._raise_irq = raise_irq
        self._output = output
        self._lock = _threads.Lock()
        self._rx: Deque[int] = deque()
        self.tx_bytes = 0
        self.reset()

    def reset(self) -> None:
        self.regs = {ILPR: 0, IBRD: 0, FBRD: 0, LCR_H: 0, CR: 0x300, IFLS: 0x12, IMSC: 0, DMACR: 0}
        self.ris = 0
        self._level = False
        self._tx_since_full = 0

    # -- guest side ---------------------------------------------------------
    def read(self, offset: int, length: int) -> bytes:
        with self._lock:
            value = self._read(offset)
            self._update()
        return value.to_bytes(4, "little")[:length].ljust(length, b"\0")

    def _read(self, offset: int) -> int:
        if offset == DR:
            if not self._rx:
                return 0
            b = self._rx.popleft()
            if not self._rx:
                self.ris &= ~(INT_RX | INT_RT)
            return b
        if offset == FR:
            if self._tx_since_full >= TX_BURST:
                self._tx_since_full = 0
                return FR_TXFF | (FR_RXFE if not self._rx else 0)
            fr = FR_TXFE
            if not self._rx:
                fr |= FR_RXFE
            elif len(self._rx) >= (FIFO_DEPTH if self.regs[LCR_H] & LCR_H_FEN else 1):
                fr |= FR_RXFF
            return fr
        if offset == RIS:
            return self.ris
        if offset == MIS:
            return self.ris & self.regs[IMSC]
        if offset == RSR_ECR:
            return 0
        if ID_BASE <= offset < ID_BASE + 32 and offset % 4 == 0:
            return ID_BYTES[(offset - ID_BASE) // 4]
        return self.regs.get(offset, 0)

    def write(self, offset: int, data: bytes) -> None:
        value = int.from_bytes(data[:4], "little")
        out = None
        with self._lock:
            if offset == DR:
                out = bytes((value & 0xFF,))
                self.tx_bytes += 1
                self._tx_since_full += 1
                self.ris |= INT_TX
            elif offset == ICR:
                self.ris &= ~(value & INT_ALL)
                if self._rx:
                    self.ris |= INT_RX | INT_RT  # still data: the condition holds
            elif offset == IMSC:
                self.regs[IMSC] = value & INT_ALL
            elif offset in self.regs:
                self.regs[offset] = value & 0xFFFF
            self._update()
        if out is not None:
            self._output(out)

    # -- host side ------------------------------------------------------------
    def receive(self, data: bytes) -> int:
        """Queue input for the guest (host stdin); returns how many bytes were
        taken. Nothing is taken until the guest's driver unmasks the receive
        interrupts: Linux drains the FIFO when it opens the port, so input
        sent earlier (a pipe, or keys typed during boot) would be lost."""
        with self._lock:
            if not self.regs[IMSC] & (INT_RX | INT_RT):
                return 0
            room = RX_QUEUE_MAX - len(self._rx)
            taken = data[:max(room, 0)]
            self._rx.extend(taken)
            if self._rx:
                self.ris |= INT_RX | INT_RT
            self._update()
        return len(taken)

    def _update(self) -> None:
        level = bool(self.ris & self.regs[IMSC])
        if level != self._level:
            self._level = level
            self._raise_irq(level)

    def dt_node(self) -> fdt.Node:
        return (fdt.Node(f"pl011@{self.base:x}")
                .prop("compatible", ["arm,pl011", "arm,primecell"])
                .prop("reg", fdt.reg64((self.base, SIZE)))
                .prop("interrupts", fdt.irq(fdt.GIC_SPI, self.spi, fdt.IRQ_TYPE_LEVEL_HIGH))
                .prop("clocks", (fdt.PHANDLE_APB_CLOCK, fdt.PHANDLE_APB_CLOCK))
                .prop("clock-names", ["uartclk", "apb_pclk"]))

    @property
    def dt_path(self) -> str:
        return f"/pl011@{self.base:x}"

    # -- snapshot -------------------------------------------------------------
    def save_state(self) -> Dict:
        """Registers by name, RIS, the interrupt line level, the TX burst
        counter and the received bytes the guest has not read yet."""
        from .state import b64  # snapshot modules load when a state is taken (start-up time)

        with self._lock:
            return {"regs": {name: self.regs[off] for name, off in _STATE_REGS.items()},
                    "ris": self.ris, "level": self._level, "tx_since_full": self._tx_since_full,
                    "rx": b64(bytes(self._rx)), "tx_bytes": self.tx_bytes}

    def load_state(self, state: Dict) -> None:
        """Take a state from :meth:`save_state` (into a fresh device). A high
        line is raised once, so the interrupt controller matches."""
        from .state import StateReader, restore_line

        r = StateReader("pl011", state, ("regs", "ris", "level", "tx_since_full", "rx", "tx_bytes"))
        saved = StateReader("pl011 regs", r.dict("regs"), _STATE_REGS)
        regs = {off: saved.int(name, 0, INT_ALL if off == IMSC else 0xFFFF) for name, off in _STATE_REGS.items()}
        ris = r.int("ris", 0, INT_ALL)
        level = r.bool("level")
        tx_since_full = r.int("tx_since_full", 0, (1 << 63) - 1)
        rx = r.bytes("rx", RX_QUEUE_MAX)
        tx_bytes = r.int("tx_bytes", 0, (1 << 63) - 1)
        if level != bool(ris & regs[IMSC]):
            raise r.fail(f"line level {int(level)} does not match RIS {ris:#x} & IMSC {regs[IMSC]:#x}")
        if rx and ris & (INT_RX | INT_RT) != INT_RX | INT_RT:
            raise r.fail(f"{len(rx)} received bytes pending but RIS {ris:#x} lacks the RX interrupts")
        with self._lock:
            was_high = self._level
            self.regs, self.ris, self._level = regs, ris, level
            self._tx_since_full, self.tx_bytes = tx_since_full, tx_bytes
            self._rx = deque(rx)
            restore_line(self._raise_irq, was_high, level)


_STATE_REGS = {"ILPR": ILPR, "IBRD": IBRD, "FBRD": FBRD, "LCR_H": LCR_H, "CR": CR, "IFLS": IFLS,
               "IMSC": IMSC, "DMACR": DMACR}

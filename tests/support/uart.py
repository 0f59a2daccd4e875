"""A PL011 for the device tests, with its interrupt levels and output recorded."""
from pyvmm.devices import pl011 as P


def make_uart():
    levels, out = [], []
    u = P.Pl011(0x9000000, 1, levels.append, out.append)
    return u, levels, out

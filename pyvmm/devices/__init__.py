"""Device models. A device sees only offsets within its own MMIO window, the
guest RAM accessor it is given, and a ``raise_irq(level)`` callable; it never
touches KVM. One file per device (and per transport)."""

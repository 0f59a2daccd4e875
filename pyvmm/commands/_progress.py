"""A progress bar on stderr for long saves and restores. Drawn only when
stderr is a terminal (logs and pipes get the final summary line alone)."""
from __future__ import annotations

import sys
import time

MiB = 1 << 20


class ProgressBar:
    WIDTH = 30

    def __init__(self, label: str, stream=None, force: bool = False):
        self.stream = stream or sys.stderr
        self.label = label
        try:
            tty = self.stream.isatty()
        except (AttributeError, ValueError):
            tty = False
        self.enabled = force or tty
        self._last = 0.0
        self._drawn = False

    def __call__(self, done: int, total: int, what: str = "") -> None:
        if not self.enabled or total <= 0:
            return
        now = time.monotonic()
        if now - self._last < 0.1 and done < total:
            return
        self._last = now
        frac = min(1.0, done / total)
        fill = int(frac * self.WIDTH)
        label = f"{self.label} {what}".strip()
        self.stream.write(f"\r{label} [{'#' * fill}{'.' * (self.WIDTH - fill)}] {frac * 100:3.0f}% "
                          f"{done / MiB:.0f}/{total / MiB:.0f} MiB")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False

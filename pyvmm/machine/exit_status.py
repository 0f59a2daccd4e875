"""How a guest's run ends, as an exit status (:class:`ExitStatus`).

Its own module because :mod:`enum` (which loads :mod:`functools` and
:mod:`collections`) is not needed before a guest first runs: the machine
modules, :mod:`pyvmm.machine` and :mod:`pyvmm.api` load this when the name is
first used (PEP 562 ``__getattr__``), which is once a run ends or a stop is
asked for (issue 13, item 5: start-up time)."""
from __future__ import annotations

import enum


class ExitStatus(enum.IntEnum):
    """How a guest's run ended, as the exit status ``pyvmm run`` and
    ``pyvmm restore`` give (the README's exit-status table)."""

    POWEROFF = 0     # the guest powered off (PSCI SYSTEM_OFF)
    ERROR = 1        # pyvmm failed at run time
    USAGE = 2        # bad options or input files
    RESET = 3        # the guest asked for a reset and on_reboot is "exit"
    CRASH = 4        # KVM crash event, failed entry, an exit pyvmm cannot continue from
    INTERRUPTED = 130  # SIGINT (Ctrl-C) or the console escape (Ctrl-A x)
    TERMINATED = 143   # SIGTERM

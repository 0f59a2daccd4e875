"""A command's options as one declarative table, read two ways: :func:`click_options`
turns it into the click options of the command (its ``--help``, its error
messages), and :func:`parse` reads a command line with it without loading click.

``pyvmm run`` starts through :func:`parse` (:mod:`pyvmm.commands.entry`): click,
and the ``inspect`` machinery it loads, cost more than the interpreter's own
start-up in the emulated test machine. :func:`parse` accepts only command
lines that are plainly valid; for anything else (``--help``, an unknown
option, a missing or malformed value, an extra argument) it returns None and
the caller hands the command line to click, so every message and exit status
is click's own.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Sequence

if TYPE_CHECKING:
    import click


class Option:
    """One option: its parameter name ``dest``, its spellings, and its type:
    ``str`` or ``int`` (takes a value), ``bool`` (a flag); ``multiple`` options
    collect every value given, in order, as a tuple."""

    __slots__ = ("dest", "flags", "type", "multiple", "default", "metavar", "help")

    def __init__(self, dest: str, *flags: str, type: type = str, multiple: bool = False, default: Any = None,
                 metavar: Optional[str] = None, help: str = ""):
        self.dest = dest
        self.flags = flags
        self.type = type
        self.multiple = multiple
        self.default = default
        self.metavar = metavar
        self.help = help


def parse(options: Sequence[Option], args: Sequence[str]) -> Optional[Dict[str, Any]]:
    """The values of ``args`` (a command's arguments, without its name) by
    ``dest``, with the defaults of options not given, as click would pass them
    to the command; None when ``args`` is not a plainly valid command line for
    ``options`` (see the module's docstring: click then says what is wrong)."""
    by_flag = {flag: o for o in options for flag in o.flags}
    values: Dict[str, Any] = {o.dest: (() if o.multiple else False if o.type is bool else o.default)
                              for o in options}
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            return values if i == len(args) else None  # no command here takes arguments
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            o = by_flag.get(name)
            if o is None or (eq and o.type is bool):
                return None
            if o.type is not bool and not eq:
                if i == len(args):
                    return None
                value = args[i]
                i += 1
        elif arg.startswith("-") and len(arg) > 1:
            # short options, possibly grouped (-xy) or with the value attached (-kIMAGE)
            j = 1
            while True:
                o = by_flag.get("-" + arg[j])
                if o is None:
                    return None
                j += 1
                if o.type is bool:
                    if not _store(values, o, ""):
                        return None
                    if j == len(arg):
                        break
                    continue
                value = arg[j:]
                if not value:
                    if i == len(args):
                        return None
                    value = args[i]
                    i += 1
                break
            if o.type is bool:
                continue
        else:
            return None  # an argument: no command here takes one
        if not _store(values, o, value):
            return None
    return values


def _store(values: Dict[str, Any], o: Option, value: str) -> bool:
    if o.type is bool:
        values[o.dest] = True
        return True
    if o.type is int:
        try:
            converted: Any = int(value)
        except ValueError:
            return False
    else:
        converted = value
    if o.multiple:
        values[o.dest] += (converted,)
    else:
        values[o.dest] = converted
    return True


def click_options(options: Sequence[Option]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A decorator adding ``options`` to a click command function, in table order."""
    import click

    def apply(f: Callable[..., Any]) -> Callable[..., Any]:
        for o in reversed(options):
            kw: Dict[str, Any] = {"help": o.help}
            if o.type is bool:
                kw["is_flag"] = True
            else:
                kw["metavar"] = o.metavar
            if o.type is int:
                kw["type"] = int
            if o.multiple:
                kw["multiple"] = True
            if o.default is not None:
                kw["default"] = o.default
            f = click.option(*o.flags, o.dest, **kw)(f)
        return f
    return apply


def click_command(name: str, options: Sequence[Option], body: Callable[[Dict[str, Any]], int],
                  doc: str, **settings: Any) -> "click.Command":
    """The click command ``name`` with ``options``, whose help is ``doc``: it
    runs ``body(values)`` and exits with the status it returns. A ``debug``
    value turns on tracebacks for the whole command line, like ``pyvmm --debug``."""
    import sys

    import click

    def callback(**values: Any) -> None:
        if values.get("debug"):
            click.get_current_context().find_root().obj["debug"] = True
        sys.exit(body(values))
    callback.__doc__ = doc
    return click.command(name, context_settings=settings)(click_options(options)(callback))

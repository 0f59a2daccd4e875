"""A command's parameters as one declarative table, read two ways: :func:`click_params`
turns it into the click parameters of the command (its ``--help``, its error
messages), and :func:`parse` reads a command line with it without loading click.

``pyvmm run``, ``restore`` and ``snapshot`` start through :func:`parse`
(:mod:`pyvmm.commands.entry`): click, and the ``inspect`` machinery it loads,
cost more than the interpreter's own start-up in the emulated test machine. :func:`parse` accepts only command
lines that are plainly valid; for anything else (``--help``, an unknown
option, a missing or malformed value, an extra argument) it returns None and
the caller hands the command line to click, so every message and exit status
is click's own.
"""
from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time; type checkers read True)
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, List, Optional, Sequence, Union

if TYPE_CHECKING:
    import click


class Option:
    """One option: its parameter name ``dest``, its spellings, and its type:
    ``str`` or ``int`` (takes a value), ``bool`` (a flag); ``multiple`` options
    collect every value given, in order, as a tuple; ``choices``, when given,
    are the only values accepted; ``bounds`` (low, high), for an ``int``, the
    only range accepted (click's IntRange)."""

    __slots__ = ("dest", "flags", "type", "multiple", "default", "metavar", "help", "choices", "show_default",
                 "bounds")

    def __init__(self, dest: str, *flags: str, type: type = str, multiple: bool = False, default: Any = None,
                 metavar: Optional[str] = None, help: str = "", choices: Optional[Sequence[str]] = None,
                 show_default: bool = False, bounds: Optional[Sequence[int]] = None):
        self.dest = dest
        self.flags = flags
        self.type = type
        self.multiple = multiple
        self.default = default
        self.metavar = metavar
        self.help = help
        self.choices = choices
        self.show_default = show_default
        self.bounds = bounds


class Argument:
    """A positional argument (one value; None when not ``required`` and not given)."""

    __slots__ = ("dest", "metavar", "required")

    def __init__(self, dest: str, metavar: str, required: bool = True):
        self.dest = dest
        self.metavar = metavar
        self.required = required


if TYPE_CHECKING:
    Param = Union[Option, Argument]


def parse(params: Sequence[Param], args: Sequence[str]) -> Optional[Dict[str, Any]]:
    """The values of ``args`` (a command's arguments, without its name) by
    ``dest``, with the defaults of options not given, as click would pass them
    to the command; None when ``args`` is not a plainly valid command line for
    ``params`` (see the module's docstring: click then says what is wrong)."""
    options = [p for p in params if isinstance(p, Option)]
    arguments = [p for p in params if isinstance(p, Argument)]
    by_flag = {flag: o for o in options for flag in o.flags}
    values: Dict[str, Any] = {o.dest: (() if o.multiple else False if o.type is bool else o.default)
                              for o in options}
    positional: List[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            positional.extend(args[i:])
            break
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
            positional.append(arg)
            continue
        if not _store(values, o, value):
            return None
    if len(positional) > len(arguments) or any(a.required for a in arguments[len(positional):]):
        return None
    for k, a in enumerate(arguments):
        values[a.dest] = positional[k] if k < len(positional) else None
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
        if o.bounds is not None and not o.bounds[0] <= converted <= o.bounds[1]:
            return False
    else:
        converted = value
    if o.choices is not None and converted not in o.choices:
        return False
    if o.multiple:
        values[o.dest] += (converted,)
    else:
        values[o.dest] = converted
    return True


def click_params(params: Sequence[Param]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A decorator adding ``params`` to a click command function, in table order."""
    import click

    def apply(f: Callable[..., Any]) -> Callable[..., Any]:
        for o in reversed(params):
            if isinstance(o, Argument):
                f = click.argument(o.dest, metavar=o.metavar, required=o.required)(f)
                continue
            kw: Dict[str, Any] = {"help": o.help}
            if o.type is bool:
                kw["is_flag"] = True
            else:
                kw["metavar"] = o.metavar
            if o.type is int:
                kw["type"] = int if o.bounds is None else click.IntRange(o.bounds[0], o.bounds[1])
            if o.choices is not None:
                kw["type"] = click.Choice(list(o.choices))
            if o.show_default:
                kw["show_default"] = True
            if o.multiple:
                kw["multiple"] = True
            if o.default is not None:
                kw["default"] = o.default
            f = click.option(*o.flags, o.dest, **kw)(f)
        return f
    return apply


def click_command(name: str, params: Sequence[Param], body: Callable[[Dict[str, Any]], int],
                  doc: str, **settings: Any) -> "click.Command":
    """The click command ``name`` with ``params``, whose help is ``doc``: it
    runs ``body(values)`` and exits with the status it returns. A ``debug``
    value turns on tracebacks for the whole command line, like ``pyvmm --debug``."""
    import sys

    import click

    def callback(**values: Any) -> None:
        if values.get("debug"):
            click.get_current_context().find_root().obj["debug"] = True
        sys.exit(body(values))
    callback.__doc__ = doc
    return click.command(name, context_settings=settings)(click_params(params)(callback))


def lazy_command(namespace: Dict[str, Any], name: str, attribute: str, params: Sequence[Param],
                 body: Callable[[Dict[str, Any]], int], doc: str,
                 **settings: Any) -> Callable[[str], Any]:
    """A module ``__getattr__`` (PEP 562) that builds the click command (:func:`click_command`)
    the first time ``attribute`` is read and keeps it in ``namespace`` (the module's globals):
    a command module loads click only for click's own paths (:mod:`pyvmm.cli`)."""
    def __getattr__(attr: str) -> Any:
        if attr != attribute:
            raise AttributeError(f"module {namespace['__name__']!r} has no attribute {attr!r}")
        namespace[attr] = command = click_command(name, params, body, doc, **settings)
        return command
    return __getattr__

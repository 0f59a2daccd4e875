"""Record classes for the modules ``pyvmm run`` loads, without :mod:`dataclasses`.

``import dataclasses`` loads :mod:`inspect` (and ``ast``, ``dis``,
``tokenize``, ``re``, ``enum``): in the emulated test machine that alone
took longer than the interpreter's own start-up (issue 13, item 5). The
subset pyvmm's records use is small: :func:`record` reads a class's
annotated fields (in order, with their defaults or a :func:`field`
``default_factory``) and gives it ``__init__``, ``__repr__`` and ``__eq__``
as :func:`dataclasses.dataclass` would (and calls ``__post_init__`` if the class has one); ``frozen=True`` also makes
instances read-only and hashable. :func:`replace` is
:func:`dataclasses.replace` for these classes. Type checkers treat
:func:`record` as a dataclass decorator (PEP 681). Fields are the class's
own annotations: records do not inherit fields. :func:`tuple_record` is the
subset of :func:`collections.namedtuple` pyvmm uses, without loading
:mod:`collections` (and the :mod:`functools`, :mod:`operator` and others it loads).
"""
from __future__ import annotations

from _operator import itemgetter  # operator's C core (always built in): no operator module

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time; type checkers read True)
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, List, Tuple, TypeVar

if TYPE_CHECKING:
    from typing import dataclass_transform
else:
    def dataclass_transform(**kwargs):
        return lambda f: f

if TYPE_CHECKING:
    T = TypeVar("T")


class _Factory:
    """A field's ``default_factory``; shown as ``<factory>`` in signatures, like dataclasses."""

    __slots__ = ("make",)

    def __init__(self, make: Callable[[], Any]):
        self.make = make

    def __repr__(self) -> str:
        return "<factory>"


def field(*, default_factory: Callable[[], Any]) -> Any:
    """A field whose default is made per instance by ``default_factory()``."""
    return _Factory(default_factory)


class FrozenInstanceError(AttributeError):
    """Assigning to a field of a ``frozen`` record."""


def _frozen_setattr(self, name, value):
    raise FrozenInstanceError(f"cannot assign to field {name!r}")


def _frozen_delattr(self, name):
    raise FrozenInstanceError(f"cannot delete field {name!r}")


_NO_DEFAULT = object()


@dataclass_transform(field_specifiers=(field,))
def record(cls: Any = None, *, frozen: bool = False) -> Any:
    """The class decorator (``@record`` or ``@record(frozen=True)``)."""
    def wrap(cls: Any) -> Any:
        names: Tuple[str, ...] = tuple(cls.__dict__.get("__annotations__", {}))
        defaults: Dict[str, Any] = {}
        for n in names:
            default = cls.__dict__.get(n, _NO_DEFAULT)
            if default is not _NO_DEFAULT:
                defaults[n] = default
                if isinstance(default, _Factory):
                    delattr(cls, n)
            elif defaults:
                raise TypeError(f"{cls.__qualname__}: field {n!r} without a default follows one with a default")
        init = _make_init(cls.__qualname__, names, defaults, frozen, "__post_init__" in cls.__dict__)
        init.__qualname__ = f"{cls.__qualname__}.__init__"
        init.__annotations__ = {n: cls.__annotations__[n] for n in names}
        init.__annotations__["return"] = None
        cls.__init__ = init
        cls.__record_fields__ = names
        if "__repr__" not in cls.__dict__:
            cls.__repr__ = _repr
        if "__eq__" not in cls.__dict__:
            cls.__eq__ = _eq
        if frozen:
            cls.__setattr__ = _frozen_setattr
            cls.__delattr__ = _frozen_delattr
            cls.__hash__ = _hash
        else:
            cls.__hash__ = None
        setattr(cls, "__match_args__", names)
        return cls
    return wrap if cls is None else wrap(cls)


def _bind(what: str, names: Tuple[str, ...], required: int, default: Callable[[int], Any],
          args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> List[Any]:
    """The values of fields ``names`` from a call's ``args`` and ``kwargs``, as
    Python binds them to a signature whose fields from index ``required`` on
    have defaults (``default(i)``); TypeError, as Python words it, for a wrong call."""
    given = len(args)
    if given > len(names):
        raise TypeError(f"{what}() takes {len(names)} arguments but {given} were given")
    values = list(args)
    used = 0
    for i in range(given, len(names)):
        n = names[i]
        if n in kwargs:
            values.append(kwargs[n])
            used += 1
        elif i >= required:
            values.append(default(i))
        else:
            missing = [m for m in names[i:required] if m not in kwargs]
            raise TypeError(f"{what}() missing {len(missing)} required argument{'s' if len(missing) > 1 else ''}: "
                            + ", ".join(map(repr, missing)))
    if used != len(kwargs):
        extra = next(k for k in kwargs if k not in names[given:])
        raise TypeError(f"{what}() got {'multiple values for' if extra in names else 'an unexpected keyword'} "
                        f"argument {extra!r}")
    return values


def _make_init(qualname: str, names: Tuple[str, ...], defaults: Dict[str, Any], frozen: bool,
               post_init: bool) -> Callable[..., None]:
    """``__init__(self, *fields)`` for a record: the fields positionally or by
    name, their defaults (a :func:`field` factory called per instance). One
    closure, not code generated and compiled per class: compiling an
    ``__init__`` for each record at import cost start-up time (issue 13, item 5)."""
    what = f"{qualname}.__init__"
    set_field = object.__setattr__ if frozen else setattr
    required = len(names) - len(defaults)

    def default(i: int) -> Any:
        value = defaults[names[i]]
        return value.make() if isinstance(value, _Factory) else value

    def __init__(self, *args, **kwargs):
        values = args if len(args) == len(names) and not kwargs else _bind(what, names, required, default, args,
                                                                              kwargs)
        for n, v in zip(names, values):
            set_field(self, n, v)
        if post_init:
            self.__post_init__()
    return __init__


def _values(obj: Any) -> Tuple[Any, ...]:
    return tuple(getattr(obj, n) for n in obj.__record_fields__)


def _repr(self: Any) -> str:
    return f"{type(self).__qualname__}(" + ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__record_fields__) + ")"


def _eq(self: Any, other: Any) -> Any:
    if other.__class__ is not self.__class__:
        return NotImplemented
    return _values(self) == _values(other)


def _hash(self: Any) -> int:
    return hash(_values(self))


def as_dict(obj: Any) -> Dict[str, Any]:
    """The record's fields by name (shallow, unlike :func:`dataclasses.asdict`)."""
    return {n: getattr(obj, n) for n in obj.__record_fields__}


def replace(obj: T, **changes: Any) -> T:
    """A copy of the record ``obj`` with ``changes`` (field name: value)."""
    values = {n: getattr(obj, n) for n in obj.__record_fields__}  # type: ignore[attr-defined]
    unknown = set(changes) - set(values)
    if unknown:
        raise TypeError(f"{type(obj).__name__} has no field {sorted(unknown)[0]!r}")
    values.update(changes)
    return type(obj)(**values)


def tuple_record(typename: str, field_names: str, defaults: Tuple[Any, ...] = (), module: str = __name__) -> Any:
    """A tuple subclass with named fields, as ``collections.namedtuple(typename,
    field_names, defaults=defaults)`` makes (positional or keyword arguments, the
    last ``len(defaults)`` fields optional, read-only attributes, ``_fields``, the
    same repr), built without :func:`exec` and without loading :mod:`collections`."""
    fields = tuple(field_names.split())
    first_default = len(fields) - len(defaults)

    def __new__(cls: Any, *args: Any, **kwargs: Any) -> Any:
        return tuple.__new__(cls, _bind(typename, fields, first_default, lambda i: defaults[i - first_default],
                                        args, kwargs))

    def __repr__(self: Any) -> str:
        return f"{typename}(" + ", ".join(f"{n}={v!r}" for n, v in zip(fields, self)) + ")"

    def __getnewargs__(self: Any) -> Tuple[Any, ...]:
        return tuple(self)

    namespace: Dict[str, Any] = {"__slots__": (), "__module__": module, "_fields": fields, "__new__": __new__,
                                 "__repr__": __repr__, "__getnewargs__": __getnewargs__}
    for i, name in enumerate(fields):
        namespace[name] = property(itemgetter(i), doc=f"Alias for field number {i}")
    return type(typename, (tuple,), namespace)

"""Checked reading of a saved state section (:class:`StateReader`): a device's
``save_state`` dict, the vGIC's, the snapshot manifest's machine configuration.

One strictness for all of them (docs/snapshot-format.md, "Versions"): every
field the reader names must be there (unless it names it optional) with the
right type and range, no other field may be, and a ``version`` newer than the
reader knows is refused; all before anything is taken. A refusal is a
:class:`UsageProblem` whose one-line message names the section and the field."""
from __future__ import annotations

import builtins

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time; type checkers read True)
if TYPE_CHECKING:
    from typing import Any, Dict, Iterable, List, Literal, Optional, Union, overload
else:
    def overload(method):  # typing.overload's run-time effect: none (the last definition stands)
        return method

from ..errors import UsageProblem


def b64(data: Union[bytes, bytearray]) -> str:
    import base64  # here, not at the top: pyvmm run never saves state (start-up time)

    return base64.b64encode(bytes(data)).decode("ascii")


def restore_line(raise_irq, was_high: bool, level: bool) -> None:
    """After a device took a saved state: raise a high line once, so the
    interrupt controller (restored before the devices) holds it too; lower a
    line that was high and is saved low."""
    if level:
        raise_irq(True)
    elif was_high:
        raise_irq(False)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class StateReader:
    """The fields of one saved state dict, for the section named ``what``.

    ``keys``: the fields it must have; ``optional``: fields it may have.
    ``version``: the newest version of the section this reader knows; the
    section's ``version`` field (absent: 1, the form saved before sections
    carried one) must not be newer."""

    def __init__(self, what: str, state: Any, keys: Iterable[str], optional: Iterable[str] = (),
                 version: int = 1):
        self.what = what
        if not isinstance(state, dict):
            raise UsageProblem(f"{what} state is not a JSON object (got {type(state).__name__})")
        self.state = state
        # The version first: a newer section may well have other fields.
        self.version = self.int("version", 1, 1 << 31) if "version" in state else 1
        if self.version > version:
            raise UsageProblem(f"{what} state is version {self.version}, this pyvmm reads up to {version}",
                               "restore with the pyvmm that saved it, or a newer one")
        keys, optional = list(keys), list(optional) + ["version"]
        missing = [k for k in keys if k not in state]
        if missing:
            raise UsageProblem(f"{what} state lacks {', '.join(map(repr, missing))}")
        extra = sorted(str(k) for k in state if k not in keys and k not in optional)
        if extra:
            raise UsageProblem(f"{what} state has unknown fields {', '.join(map(repr, extra))}")

    def has(self, key: str) -> bool:
        return key in self.state

    def nested(self, key: str, keys: Iterable[str], optional: Iterable[str] = (), index: Optional[int] = None,
               version: int = 1) -> "StateReader":
        """The reader of the dict under ``key`` (or of entry ``index`` of the list there)."""
        value = self.state[key] if index is None else self.state[key][index]
        where = f"{self.what} {key}" + ("" if index is None else f"[{index}]")
        return StateReader(where, value, keys, optional, version)

    def fail(self, message: str) -> UsageProblem:
        return UsageProblem(f"{self.what} state: {message}")

    def int(self, key: builtins.str, lo: builtins.int, hi: builtins.int) -> builtins.int:
        value = self.state[key]
        if type(value) is not int or not lo <= value <= hi:  # bool is not an int here
            raise self.fail(f"{key!r} must be an integer in {lo:#x}..{hi:#x}, not {_shown(value)}")
        return value

    def bool(self, key: builtins.str) -> builtins.bool:
        value = self.state[key]
        if type(value) is not bool:
            raise self.fail(f"{key!r} must be true or false, not {_shown(value)}")
        return value

    @overload
    def str(self, key: builtins.str, optional: Literal[False] = False) -> builtins.str: ...

    @overload
    def str(self, key: builtins.str, optional: builtins.bool) -> Optional[builtins.str]: ...

    def str(self, key: builtins.str, optional: builtins.bool = False) -> Optional[builtins.str]:
        value = self.state[key]
        if value is None and optional:
            return None
        if not isinstance(value, str):
            raise self.fail(f"{key!r} must be a string{' or null' if optional else ''}, not {_shown(value)}")
        return value

    def bytes(self, key: builtins.str, max_len: builtins.int) -> builtins.bytes:
        value = self.state[key]
        if not isinstance(value, str):
            raise self.fail(f"{key!r} must be base64 text, not {_shown(value)}")
        import base64
        import binascii

        try:
            data = base64.b64decode(value.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raise self.fail(f"{key!r} is not valid base64") from None
        if len(data) > max_len:
            raise self.fail(f"{key!r} holds {len(data)} bytes, more than the {max_len} the device keeps")
        return data

    def dict(self, key: builtins.str) -> Dict:
        value = self.state[key]
        if not isinstance(value, dict):
            raise self.fail(f"{key!r} must be a JSON object, not {_shown(value)}")
        return value

    def list(self, key: builtins.str, length: Optional[builtins.int] = None) -> List:
        value = self.state[key]
        if not isinstance(value, list):
            raise self.fail(f"{key!r} must be a list, not {_shown(value)}")
        if length is not None and len(value) != length:
            raise self.fail(f"{key!r} has {len(value)} entries, expected {length}")
        return value

    def words(self, key: builtins.str, length: builtins.int, bits: builtins.int) -> List[builtins.int]:
        """A list of ``length`` unsigned ``bits``-bit integers."""
        value = self.list(key, length)
        for k, w in enumerate(value):
            if type(w) is not int or not 0 <= w < (1 << bits):
                raise self.fail(f"{key}[{k}] must be a {bits}-bit unsigned integer, not {_shown(w)}")
        return value

    @overload
    def ints(self, key: builtins.str, lo: builtins.int, hi: builtins.int,
             nullable: Literal[False] = False) -> List[builtins.int]: ...

    @overload
    def ints(self, key: builtins.str, lo: builtins.int, hi: builtins.int,
             nullable: builtins.bool) -> Optional[List[builtins.int]]: ...

    def ints(self, key: builtins.str, lo: builtins.int, hi: builtins.int,
             nullable: builtins.bool = False) -> Optional[List[builtins.int]]:
        """A list of integers in ``lo..hi`` (or null, when ``nullable``)."""
        value = self.state[key]
        if value is None and nullable:
            return None
        if not isinstance(value, list) or any(type(v) is not int or not lo <= v <= hi for v in value):
            raise self.fail(f"{key!r} must be a list of integers in {lo:#x}..{hi:#x}"
                            f"{' or null' if nullable else ''}, not {_shown(value)}")
        return value

    def int_or_none(self, key: builtins.str, lo: builtins.int, hi: builtins.int) -> Optional[builtins.int]:
        return None if self.state[key] is None else self.int(key, lo, hi)

    def uint(self, key: builtins.str, bits: builtins.int) -> builtins.int:
        """An unsigned ``bits``-bit integer."""
        return self.int(key, 0, (1 << bits) - 1)


MAX_JSON_DEPTH = 32
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def json_depth(data: bytes, limit: int = MAX_JSON_DEPTH) -> int:
    """The deepest nesting of [ and { outside strings in JSON text ``data``
    (bytes: no decoding), counting stops just past ``limit``."""
    if b"\\" not in data:
        # No escapes: the strings are exactly the odd pieces between quotes,
        # so only the brackets of the even pieces are walked (a manifest's
        # few hundred, not its every byte).
        brackets = b"".join(data.split(b'"')[::2]).translate(None, _NOT_BRACKETS)
        data = brackets
    depth = deepest = 0
    in_string = escaped = False
    for b in data:
        if in_string:
            if escaped:
                escaped = False
            elif b == 0x5C:  # backslash
                escaped = True
            elif b == 0x22:
                in_string = False
        elif b == 0x22:
            in_string = True
        elif b in (0x5B, 0x7B):
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    return deepest
        elif b in (0x5D, 0x7D):
            depth -= 1
    return deepest


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    """A JSON number with a fraction or exponent; one too large for a float
    (``1e999``, which Python would read as infinity) is refused like NaN."""
    value = float(text)
    if value - value != 0.0:  # inf - inf is nan; finite - itself is 0
        raise ValueError(f"{text} does not fit a 64-bit float")
    return value


def loads(data: bytes, what: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """JSON from outside (a snapshot manifest, a state file): UTF-8, at most
    ``max_depth`` levels of nesting, no NaN/Infinity; UsageProblem naming
    ``what`` and the reason otherwise (never a RecursionError)."""
    data = bytes(data)
    if json_depth(data, max_depth) > max_depth:
        raise UsageProblem(f"{what} is nested deeper than {max_depth} levels")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageProblem(f"{what} is not UTF-8 text (byte {e.start})") from None
    try:
        import json  # here, not at the top: pyvmm run reads no JSON (start-up time)

        return json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except ValueError as e:
        raise UsageProblem(f"{what} is not JSON ({e})") from None


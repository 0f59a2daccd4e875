"""Checked reading of a device's saved state (the dict ``save_state`` returns,
after a JSON round trip). Every field is checked for presence, type and range
before a device takes any of it; anything else is a :class:`UsageProblem`
whose one-line message names the device and the field."""
from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Dict, Iterable, List, Optional

from ..errors import UsageProblem


def b64(data: bytes) -> str:
    return base64.b64encode(bytes(data)).decode("ascii")


def restore_line(raise_irq, was_high: bool, level: bool) -> None:
    """After a device took a saved state: raise a high line once, so the
    interrupt controller (restored before the devices) holds it too; lower a
    line that was high and is saved low."""
    if level:
        raise_irq(True)
    elif was_high:
        raise_irq(False)


MAX_JSON_DEPTH = 32


def json_depth(data: bytes, limit: int = MAX_JSON_DEPTH) -> int:
    """The deepest nesting of [ and { outside strings in JSON text ``data``
    (bytes: no decoding), counting stops just past ``limit``."""
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
        return json.loads(text, parse_constant=_no_constant)
    except ValueError as e:
        raise UsageProblem(f"{what} is not JSON ({e})") from None


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class StateReader:
    """The fields of one saved state dict, for the device named ``what``."""

    def __init__(self, what: str, state: Any, keys: Iterable[str]):
        self.what = what
        if not isinstance(state, dict):
            raise UsageProblem(f"{what} state is not a JSON object (got {type(state).__name__})")
        keys = list(keys)
        missing = [k for k in keys if k not in state]
        if missing:
            raise UsageProblem(f"{what} state lacks {', '.join(map(repr, missing))}")
        extra = sorted(str(k) for k in state if k not in keys)
        if extra:
            raise UsageProblem(f"{what} state has unknown fields {', '.join(map(repr, extra))}")
        self.state = state

    def fail(self, message: str) -> UsageProblem:
        return UsageProblem(f"{self.what} state: {message}")

    def int(self, key: str, lo: int, hi: int, optional: bool = False) -> Optional[int]:
        value = self.state[key]
        if value is None and optional:
            return None
        if type(value) is not int or not lo <= value <= hi:  # bool is not an int here
            raise self.fail(f"{key!r} must be an integer in {lo:#x}..{hi:#x}"
                            f"{' or null' if optional else ''}, not {_shown(value)}")
        return value

    def int_list(self, key: str, lo: int, hi: int, max_len: int, ascending: bool = False,
                 optional: bool = False) -> Optional[List[int]]:
        """A list of at most ``max_len`` integers in lo..hi (``ascending``:
        strictly increasing, so no repeats)."""
        value = self.state[key]
        if value is None and optional:
            return None
        if not isinstance(value, list) or len(value) > max_len:
            raise self.fail(f"{key!r} must be a list of at most {max_len} integers"
                            f"{' or null' if optional else ''}, not {_shown(value)}")
        for i, v in enumerate(value):
            if type(v) is not int or not lo <= v <= hi:
                raise self.fail(f"{key!r}[{i}] must be an integer in {lo:#x}..{hi:#x}, not {_shown(v)}")
        if ascending and any(a >= b for a, b in zip(value, value[1:])):
            raise self.fail(f"{key!r} must be strictly increasing, not {_shown(value)}")
        return value

    def bool(self, key: str) -> bool:
        value = self.state[key]
        if type(value) is not bool:
            raise self.fail(f"{key!r} must be true or false, not {_shown(value)}")
        return value

    def str(self, key: str, optional: bool = False) -> Optional[str]:
        value = self.state[key]
        if value is None and optional:
            return None
        if not isinstance(value, str):
            raise self.fail(f"{key!r} must be a string{' or null' if optional else ''}, not {_shown(value)}")
        return value

    def bytes(self, key: str, max_len: int) -> bytes:
        value = self.state[key]
        if not isinstance(value, str):
            raise self.fail(f"{key!r} must be base64 text, not {_shown(value)}")
        try:
            data = base64.b64decode(value.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raise self.fail(f"{key!r} is not valid base64") from None
        if len(data) > max_len:
            raise self.fail(f"{key!r} holds {len(data)} bytes, more than the {max_len} the device keeps")
        return data

    def dict(self, key: str) -> Dict:
        value = self.state[key]
        if not isinstance(value, dict):
            raise self.fail(f"{key!r} must be a JSON object, not {_shown(value)}")
        return value

    def list(self, key: str, length: int) -> List:
        value = self.state[key]
        if not isinstance(value, list):
            raise self.fail(f"{key!r} must be a list, not {_shown(value)}")
        if len(value) != length:
            raise self.fail(f"{key!r} has {len(value)} entries, this device has {length}")
        return value

    def list_of(self, key: str, min_len: int, max_len: int) -> List:
        """A list of ``min_len``..``max_len`` entries (checked by the caller)."""
        value = self.state[key]
        if not isinstance(value, list):
            raise self.fail(f"{key!r} must be a list, not {_shown(value)}")
        if not min_len <= len(value) <= max_len:
            raise self.fail(f"{key!r} has {len(value)} entries, not {min_len}..{max_len}")
        return value

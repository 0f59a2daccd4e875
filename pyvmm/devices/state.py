"""Checked reading of a device's saved state (the dict ``save_state`` returns,
after a JSON round trip). Every field is checked for presence, type and range
before a device takes any of it; anything else is a :class:`UsageProblem`
whose one-line message names the device and the field."""
from __future__ import annotations

import base64
import binascii
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

    def int(self, key: str, lo: int, hi: int) -> int:
        value = self.state[key]
        if type(value) is not int or not lo <= value <= hi:  # bool is not an int here
            raise self.fail(f"{key!r} must be an integer in {lo:#x}..{hi:#x}, not {_shown(value)}")
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

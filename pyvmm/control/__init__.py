"""The control socket of a running VM: the wire (:mod:`.channel`, server and
client) and the requests a machine answers (:mod:`.handler`)."""
from .channel import ControlError, ControlServer, call

__all__ = ["ControlError", "ControlServer", "call"]

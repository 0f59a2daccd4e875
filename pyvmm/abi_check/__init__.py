"""Conformance of the running kernel to the KVM SME ABI page
(docs/kvm-sme-abi.md), one module per section of the page; :func:`run`
returns a :class:`Report`."""
from .base import FAIL, PASS, SKIP, Result
from .checker import Checker, Report, run

__all__ = ["Checker", "FAIL", "PASS", "Report", "Result", "SKIP", "run"]

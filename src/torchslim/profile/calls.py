"""Counting the interpreter's share of a forward pass: Python and C function calls.

A small model's latency is mostly framework overhead, and most of it is not in ATen: a
transformers forward makes about a thousand Python and builtin calls (config lookups, output
dataclasses, mask helpers, ``nn.Module.__call__``) for a hundred ATen ops. ``CallCounter``
counts them with ``sys.setprofile`` ("call" and "c_call" events) during a plain forward: under
the cost counter's dispatch mode and hooks the same forward makes about three times as many.
"""

from __future__ import annotations

import sys
from types import FrameType
from typing import Any


class CallCounter:
    """Counts Python and C function calls while active (a context manager)."""

    def __init__(self) -> None:
        self.calls = 0
        self._previous: Any = None

    def _event(self, frame: FrameType, event: str, arg: Any) -> None:
        if event in ("call", "c_call"):
            self.calls += 1

    def __enter__(self) -> CallCounter:
        self._previous = sys.getprofile()
        sys.setprofile(self._event)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.setprofile(self._previous)

"""Counting the interpreter's share of a forward pass: Python and C function calls.

A small model's latency is mostly framework overhead, and most of it is not in ATen: a
transformers forward makes about a thousand Python and builtin calls (config lookups, output
dataclasses, mask helpers, ``nn.Module.__call__``) for a hundred ATen ops. ``CallCounter``
counts them with ``sys.setprofile`` ("call" and "c_call" events); calls made from inside frames
of ``skip`` (the profiler's own dispatch hooks) are not counted, so a count taken under the
cost counter matches a plain forward's.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from types import CodeType, FrameType
from typing import Any


class CallCounter:
    """Counts Python and C function calls while active (a context manager)."""

    def __init__(self, skip: Iterable[CodeType] = ()) -> None:
        self.calls = 0
        self._skip = set(skip)
        self._inside_skip = 0
        self._previous: Any = None

    def _event(self, frame: FrameType, event: str, arg: Any) -> None:
        if event == "call":
            if frame.f_code in self._skip:
                self._inside_skip += 1
            elif not self._inside_skip:
                self.calls += 1
        elif event == "return" and frame.f_code in self._skip:
            self._inside_skip -= 1
        elif event == "c_call" and not self._inside_skip:
            self.calls += 1

    def __enter__(self) -> CallCounter:
        self._previous = sys.getprofile()
        sys.setprofile(self._event)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.setprofile(self._previous)

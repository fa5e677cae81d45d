"""Running torch.profiler quietly: Kineto prints to the process's file descriptors, not Python's."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def native_output_silenced() -> Iterator[None]:
    """Send file descriptors 1 and 2 to /dev/null: Kineto prints "USDT: ... profiler_start" and
    "profiler_stop" from C++ straight to the process's stderr when a profile starts and stops,
    which Python's sys.stderr cannot intercept and which would land in the middle of our tables."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(fd) for fd in (1, 2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in (1, 2):
            os.dup2(devnull, fd)
        yield
    finally:
        for fd, copy in zip((1, 2), saved, strict=True):
            os.dup2(copy, fd)
            os.close(copy)
        os.close(devnull)

"""Stage lines on stderr for the command line: what runs now, and how long each stage took.

``with stage("calibrating"):`` shows a spinner with the elapsed time on a terminal and prints
``calibrating: 3.2 s`` when the stage ends (plain lines when stderr is a file). Silent unless the
``torchslim`` command enabled it, so the Python API never prints.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Iterator

_enabled = contextvars.ContextVar("torchslim_progress", default=False)
MIN_SECONDS_SHOWN = 0.5  # quicker stages print no line


@contextlib.contextmanager
def enabled() -> Iterator[None]:
    """Stage lines on inside the block (the command line's entry point)."""
    token = _enabled.set(True)
    try:
        yield
    finally:
        _enabled.reset(token)


@contextlib.contextmanager
def stage(label: str) -> Iterator[None]:
    """Show ``label`` while the block runs and its duration once it is done."""
    if not _enabled.get():
        yield
        return
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    start = time.perf_counter()
    if console.is_terminal:
        columns = (SpinnerColumn(), TextColumn(label), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=True) as progress:
            progress.add_task(label, total=None)
            yield
    else:
        yield
    elapsed = time.perf_counter() - start
    if elapsed >= MIN_SECONDS_SHOWN:
        console.print(f"[dim]{label}: {elapsed:.1f} s[/]", highlight=False)

"""The search's ``--out``: what it holds, what may be replaced, what must never be touched.

The study, the trials and the front are written piecemeal while the search runs (a killed
search resumes from them), so the folder is checked like a training run's: it may hold only
these names; anything else is the user's and refuses the folder whole.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from torchslim._outdir import probe_writable
from torchslim.errors import OutputDirectoryError

SEARCH_FILES = ("study.db", "study.db-journal", "search.json", "trials/", "best/", "report.html")


def check_search_directory(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse ``out`` before any work: a file, a folder holding anything but a search's files,
    or a search's folder without ``resume`` (continue it) or ``overwrite`` (start again).

    Raises:
        OutputDirectoryError: naming the path, what is in the way and what to do instead.
    """
    if (out.exists() and not out.is_dir()) or out.is_symlink():
        raise OutputDirectoryError(f"--out {out} is a file or a link; give a folder for the search")
    if not out.is_dir():
        probe_writable(_existing_parent(out), "--out", out)
        return
    probe_writable(out, "--out", out)
    present = _top_level(out)
    foreign = [name for name in present if name not in SEARCH_FILES]
    if foreign:
        raise OutputDirectoryError(
            f"--out {out} holds files a search did not write ({', '.join(foreign[:5])}); "
            "torchslim never removes them: choose a new directory"
        )
    if present and not (resume or overwrite):
        raise OutputDirectoryError(
            f"--out {out} holds a search; pass --resume to continue it, --overwrite to start "
            "again over its files, or choose a new directory"
        )


def clear_search(out: Path) -> None:
    """Remove a previous search's files (only the names a search writes)."""
    for name in _top_level(out) if out.is_dir() else []:
        if name in SEARCH_FILES:
            path = out / name.rstrip("/")
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def _top_level(folder: Path) -> list[str]:
    with os.scandir(folder) as scan:
        return sorted(e.name + ("/" if e.is_dir(follow_symlinks=False) else "") for e in scan)


def _existing_parent(path: Path) -> Path:
    parent = path.resolve().parent
    while not parent.exists():
        parent = parent.parent
    return parent

"""The ``--out`` directory: what torchslim may write there, and what it must never remove.

A directory is a torchslim artifact when it holds :data:`RECORD`, written last by
:func:`commit`, listing every file torchslim put there. That record is the one answer to "may
this go?": when an artifact is replaced, only the files it lists are removed, and a directory
holding anything else (the user's notes, data, a stray subfolder) is refused whole, before any
work (:func:`check_out`) and again at the moment of writing (:func:`staging_directory`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

from torchslim.errors import OutputDirectoryError

RECORD = ".torchslim-artifact.json"
STAGING_PREFIX = ".torchslim-staging-"
_SHOWN = 5  # foreign entries named in an error


def artifact_files(directory: Path) -> frozenset[str] | None:
    """The files torchslim recorded writing in ``directory`` (record included), or None when
    ``directory`` is not a torchslim artifact (no record, or one that is not torchslim's)."""
    try:
        record = json.loads((directory / RECORD).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("written_by") != "torchslim":
        return None
    files = record.get("files")
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        return None
    return frozenset(files) | {RECORD}


def entries(directory: Path) -> set[str]:
    """Every file, link and empty folder under ``directory``, as relative POSIX paths
    (links are not followed: a link is an entry, never what it points to)."""
    found: set[str] = set()
    for root, folders, files in os.walk(directory):
        base = Path(root).relative_to(directory)
        for name in files + [f for f in folders if (Path(root) / f).is_symlink()]:
            found.add((base / name).as_posix())
        if not folders and not files and Path(root) != directory:
            found.add(base.as_posix() + "/")
    return found


def foreign_entries(directory: Path) -> list[str]:
    """The entries of ``directory`` torchslim did not write: for a folder that is no artifact,
    its top-level names (a folder with "/"; never a walk of a whole tree such as ``/``)."""
    owned = artifact_files(directory)
    if owned is None:
        return _top_level(directory)
    return sorted(entries(directory) - owned)


def _top_level(directory: Path) -> list[str]:
    with os.scandir(directory) as scan:
        return sorted(e.name + ("/" if e.is_dir(follow_symlinks=False) else "") for e in scan)


def is_empty(directory: Path) -> bool:
    """Whether the folder ``directory`` holds nothing at all (hidden files count)."""
    with os.scandir(directory) as scan:
        return next(scan, None) is None


def check_out(out: Path, overwrite: bool, option: str = "--out") -> None:
    """Refuse an output directory before any work: a file, a link, a folder with files
    torchslim did not write, an artifact without ``overwrite``, the current directory (or one
    above it) unless empty, or a place this process cannot write.

    Raises:
        OutputDirectoryError: naming the path, what is in the way and what to do instead.
    """
    path = Path(out)
    _refuse_non_directory(path, option)
    if path.is_dir() and not is_empty(path):
        foreign = foreign_entries(path)
        if foreign:
            raise OutputDirectoryError(_foreign_message(path, foreign, option))
        if not overwrite:
            raise OutputDirectoryError(
                f"{option} {path} holds a torchslim artifact; pass --overwrite to replace it "
                "(only the files torchslim wrote there are removed), or choose a new directory."
            )
        _refuse_holding_cwd(path, option)
        probe_writable(path.resolve().parent, option, path)
    elif path.is_dir():
        probe_writable(path, option, path)  # an empty folder is filled in place
    else:
        probe_writable(_nearest_existing(path.resolve().parent, option, path), option, path)


def _refuse_non_directory(path: Path, option: str) -> None:
    if path.is_symlink():
        raise OutputDirectoryError(
            f"{option} {path} is a symbolic link; give the directory itself ({path.resolve()})."
        )
    if path.exists() and not path.is_dir():
        raise OutputDirectoryError(
            f"{option} {path} is a file, not a directory; torchslim writes a directory "
            "(model + manifest). Choose a new directory name."
        )


def _foreign_message(path: Path, foreign: list[str], option: str) -> str:
    shown = ", ".join(foreign[:_SHOWN]) + (f" and {len(foreign) - _SHOWN} more" if
                                             len(foreign) > _SHOWN else "")  # fmt: skip
    return (
        f"{option} {path} already holds files torchslim did not write ({shown}); torchslim "
        "never removes them. Choose a new or empty directory."
    )


def _refuse_holding_cwd(path: Path, option: str) -> None:
    here, target = Path.cwd().resolve(), path.resolve()
    if target == here or target in here.parents:
        raise OutputDirectoryError(
            f"{option} {path} is the current directory or holds it; torchslim replaces an "
            "artifact by swapping the whole directory, which it will not do to the one you "
            "are in. cd elsewhere or choose a new directory."
        )


def _nearest_existing(start: Path, option: str, out: Path) -> Path:
    for folder in (start, *start.parents):
        if folder.exists():
            if not folder.is_dir():
                raise OutputDirectoryError(
                    f"{option} {out}: {folder} is a file, so no directory can be made under it."
                )
            return folder
    return Path("/")


def probe_writable(folder: Path, option: str, out: Path) -> None:
    """Create and remove a probe folder in ``folder``; an error naming ``out`` if that fails."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".torchslim-probe-", dir=folder))
    except OSError as error:
        raise OutputDirectoryError(
            f"{option} {out}: cannot write in {folder} ({error.strerror}). Choose a directory "
            "on a writable filesystem."
        ) from None


def staging_directory(target: Path) -> Path:
    """A fresh folder to write an artifact into before :func:`commit` moves it to ``target``:
    inside ``target`` when that is an empty folder, beside it otherwise.

    Raises:
        OutputDirectoryError: ``target`` is a file or link, or holds files torchslim did not
            write.
    """
    _refuse_non_directory(target, "output")
    if target.is_dir() and is_empty(target):
        return Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=target.resolve()))
    if target.is_dir():
        foreign = foreign_entries(target)
        if foreign:
            raise OutputDirectoryError(_foreign_message(target, foreign, "output"))
        _refuse_holding_cwd(target, "output")
    parent = target.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=parent))


def commit(staging: Path, target: Path) -> None:
    """Record the files in ``staging`` and make them ``target``; an artifact already there is
    swapped out and only the files its record lists are removed.

    Raises:
        OutputDirectoryError: files torchslim did not write appeared in ``target`` meanwhile.
    """
    import torchslim

    written = sorted(entries(staging))
    record = {"written_by": "torchslim", "version": torchslim.__version__, "files": written}
    (staging / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    if staging.resolve().parent == target.resolve():  # target was an empty folder: fill it in place
        _fill_in_place(staging, target)
        return
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes 0700; artifacts get normal permissions
    if not target.exists():
        os.replace(staging, target)
        return
    foreign = foreign_entries(target)
    if foreign:
        raise OutputDirectoryError(_foreign_message(target, foreign, "output"))
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.replaced-", dir=staging.parent))
    os.replace(target, old / "artifact")
    os.replace(staging, target)
    remove_artifact(old / "artifact")
    os.rmdir(old)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fill_in_place(staging: Path, target: Path) -> None:
    others = set(_top_level(target)) - {staging.name + "/"}
    if others:
        raise OutputDirectoryError(_foreign_message(target, sorted(others), "output"))
    names = [*sorted(p.name for p in staging.iterdir() if p.name != RECORD), RECORD]
    for name in names:  # the record last: a half-moved folder is never taken for an artifact
        os.replace(staging / name, target / name)
    os.rmdir(staging)


def remove_artifact(directory: Path) -> None:
    """Remove the files ``directory``'s record lists, then the folders left empty; anything
    else stays where it is (with a warning)."""
    owned = artifact_files(directory) or frozenset()
    for name in sorted(owned - {RECORD}):
        file = directory / name
        if file.is_file() or file.is_symlink():
            file.unlink()
    (directory / RECORD).unlink(missing_ok=True)
    for root, _, _ in os.walk(directory, topdown=False):  # deepest folders first
        try:
            os.rmdir(root)
        except OSError:
            warnings.warn(f"{root} kept: it holds files torchslim did not write", stacklevel=2)
            return


def discard(staging: Path) -> None:
    """Remove a staging folder of this run (the block that filled it failed)."""
    if staging.exists():
        shutil.rmtree(staging)


def scratch_directory(out: Path, purpose: str = "train") -> Path:
    """A hidden folder beside ``out`` for a run's resumable state (checkpoints, metrics): kept
    out of ``out`` so that the artifact holds only files its record lists; the caller removes
    it once the artifact is written."""
    target = out.resolve()
    return target.parent / f".{target.name}.{purpose}"


# What a training run writes in its run directory (``torchslim train --out``), piecemeal.
RUN_FILES = ("checkpoint/", "checkpoint.old/", "metrics.jsonl", "best.safetensors",
             "model.safetensors", "manifest.json")  # fmt: skip


def check_run_directory(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse a training run directory before any work: a file or link, unwritable, or a
    folder with content unless ``resume`` (continue that run) or ``overwrite`` (train afresh
    over the run's own files; any other file there still refuses).

    Raises:
        OutputDirectoryError: naming the path and what to do instead.
    """
    path = Path(out)
    _refuse_non_directory(path, "--out")
    if path.is_dir():
        probe_writable(path, "--out", path)
    else:
        probe_writable(_nearest_existing(path.resolve().parent, "--out", path), "--out", path)
    if not path.is_dir() or is_empty(path) or resume:
        return
    foreign = [e for e in _top_level(path) if e not in RUN_FILES]
    if foreign:
        raise OutputDirectoryError(_foreign_message(path, foreign, "--out"))
    if not overwrite:
        raise OutputDirectoryError(
            f"--out {path} holds a training run; pass --resume to continue it, --overwrite to "
            "train afresh over its files, or choose a new directory."
        )

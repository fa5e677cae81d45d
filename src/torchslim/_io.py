"""Atomic writes and safe loading of tensors: nothing half-written, nothing unpickled by default."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from torchslim.errors import ModelLoadError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; artifacts get normal permissions
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``path`` as a whole once the block succeeds."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_json(path: str | Path, payload: Any) -> None:
    """Write ``payload`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor]) -> None:
    """Save a flat tensor dict as safetensors, atomically (shared storages are copied apart)."""
    contiguous = {name: t.detach().contiguous().clone() for name, t in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(contiguous, str(tmp))


def load_tensors(path: str | Path, *, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Load a tensor dict from ``.safetensors`` or a ``.pt``/``.pth`` state dict.

    ``.pt`` files are read with ``weights_only=True``: tensors only, never arbitrary objects.
    Set ``allow_pickle`` only for files you trust.
    """
    file = Path(path)
    if not file.is_file():
        raise ModelLoadError(f"weights file not found: {file}")
    try:
        if file.suffix == ".safetensors":
            return load_file(str(file))
        state = torch.load(file, map_location="cpu", weights_only=not allow_pickle)
    except (SafetensorError, RuntimeError, EOFError, OSError, ValueError) as error:
        raise ModelLoadError(
            f"cannot read weights from {file}: {error}. The file is corrupt or not a "
            "state dict; re-export it with safetensors.torch.save_file(model.state_dict(), path)."
        ) from error
    except Exception as error:  # pickle.UnpicklingError for anything beyond plain tensors
        raise ModelLoadError(
            f"{file} holds objects other than tensors and was refused (weights_only=True). "
            "Save model.state_dict() instead of the whole module."
        ) from error
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"{file} is not a state dict of tensors.")
    return state


def load_state_dict_strict(
    model: torch.nn.Module, state: dict[str, torch.Tensor], source: str
) -> None:
    """Copy ``state`` into ``model``; missing/unexpected keys or bad shapes raise one error."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and own[k].shape != state[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if mismatched:
            parts.append(f"shape mismatches {mismatched[:5]}")
        raise ModelLoadError(
            f"weights from {source} do not fit the model: {'; '.join(parts)}. "
            "Check that the checkpoint was saved from the same architecture."
        )
    model.load_state_dict(state, strict=True)

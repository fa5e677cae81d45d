"""Atomic writes and safe loading of tensors: nothing half-written, nothing unpickled by default."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from torchslim import _outdir
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
    """Yield a temporary directory that becomes ``path`` once the block succeeds.

    ``path`` may be new, an empty folder, or a torchslim artifact (replaced whole; only the
    files it records as torchslim's are removed). A folder holding anything else is refused
    (``OutputDirectoryError``) and left exactly as it was; see :mod:`torchslim._outdir`.
    """
    target = Path(path)
    tmp = _outdir.staging_directory(target)
    try:
        yield tmp
        _outdir.commit(tmp, target)
    finally:
        _outdir.discard(tmp)


def write_json(path: str | Path, payload: Any) -> None:
    """Write ``payload`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")


ALIASES_KEY = "torchslim_aliases"


def save_tensors(
    path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    """Save a flat tensor dict as safetensors, atomically, with ``metadata`` in its header.

    A tensor that is the same tensor as an earlier entry (tied weights, e.g. an LM head sharing
    the embedding) is stored once; the file's metadata maps the alias to the stored name and
    ``load_tensors`` restores it, so size on disk counts tied weights once.
    """
    unique: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[int, tuple[int, ...], tuple[int, ...], torch.dtype], str] = {}
    for name, tensor in tensors.items():
        key = (tensor.data_ptr(), tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype)
        if tensor.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        unique[name] = tensor.detach().contiguous().clone()
    header = {**(metadata or {}), **({ALIASES_KEY: json.dumps(aliases)} if aliases else {})}
    with atomic_path(path) as tmp:
        save_file(unique, str(tmp), metadata=header or None)


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
            return _load_safetensors(file)
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


def _load_safetensors(file: Path) -> dict[str, torch.Tensor]:
    tensors = load_file(str(file))
    with safe_open(str(file), framework="pt") as handle:
        aliases = json.loads((handle.metadata() or {}).get(ALIASES_KEY, "{}"))
    for alias, stored in aliases.items():
        tensors[alias] = tensors[stored]
    return tensors


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

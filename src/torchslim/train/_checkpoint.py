"""Resumable checkpoints that are whole or absent, even if the process is killed mid-write.

A checkpoint is a directory (``model.safetensors``, ``optimizer.pt``, ``position.json`` and, when
the loss has trainable parameters, ``loss.safetensors``). It is written complete into a temporary
directory, then swapped in with two renames; a kill between them leaves ``checkpoint.old``, which
``load`` falls back to. So model, optimizer and position always belong to the same step.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from torchslim._io import load_tensors, save_tensors, write_json
from torchslim.errors import ModelLoadError


@dataclass
class Checkpoint:
    """What a checkpoint holds, in memory."""

    model: dict[str, torch.Tensor]
    states: dict[str, Any]  # optimizer, scheduler, rng: plain tensors and numbers only
    position: dict[str, Any]
    loss: dict[str, torch.Tensor] | None = None


def save(directory: Path, checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` to ``directory``, replacing the previous one only once complete."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        save_tensors(tmp / "model.safetensors", checkpoint.model)
        if checkpoint.loss:
            save_tensors(tmp / "loss.safetensors", checkpoint.loss)
        torch.save(checkpoint.states, tmp / "optimizer.pt")
        write_json(tmp / "position.json", checkpoint.position)
        old = _old(directory)
        if old.exists():
            shutil.rmtree(old)
        if directory.exists():
            os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def load(directory: Path) -> Checkpoint:
    """The last complete checkpoint in ``directory`` (or its ``.old`` twin after a kill)."""
    for candidate in (directory, _old(directory)):
        if (candidate / "position.json").is_file():
            loss_file = candidate / "loss.safetensors"
            return Checkpoint(
                model=load_tensors(candidate / "model.safetensors"),
                states=torch.load(candidate / "optimizer.pt", weights_only=True),
                position=json.loads((candidate / "position.json").read_text()),
                loss=load_tensors(loss_file) if loss_file.is_file() else None,
            )
    raise ModelLoadError(f"--resume: no checkpoint in {directory}; start without it.")


def exists(directory: Path) -> bool:
    return any((d / "position.json").is_file() for d in (directory, _old(directory)))


def _old(directory: Path) -> Path:
    return directory.with_name(directory.name + ".old")

"""``torchslim train``: train a zoo architecture from scratch and write a model artifact."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

from torchslim._io import save_tensors, write_json
from torchslim._machine import machine_facts
from torchslim.errors import ConfigError
from torchslim.train.config import TrainConfig
from torchslim.train.trainer import Trainer
from torchslim.zoo import get
from torchslim.zoo.vision import ImageClassifier


def train_zoo_model(
    name: str, config: TrainConfig, out_dir: str | Path, resume: bool = False, device: str = "cpu"
) -> dict[str, Any]:
    """Train zoo architecture ``name`` on its training split; return the manifest written.

    ``out_dir`` receives ``checkpoint/`` (resumable state) and, at the end, ``model.safetensors``
    and ``manifest.json`` with the command, config, measured test metrics and machine facts.
    """
    entry = get(name)
    if not isinstance(entry, ImageClassifier):
        raise ConfigError(
            f"{name} is not trainable here; trainable: fashion-cnn, fashion-resnet20/56."
        )
    torch.manual_seed(config.seed)
    model = entry.build()
    out = Path(out_dir)
    trainer = Trainer(model, config, entry.train_data(), out, device=device)
    start = time.perf_counter()
    trainer.fit(resume=resume)
    model.cpu().eval()
    manifest = {
        "model": name,
        "command": "torchslim " + shlex.join(sys.argv[1:]) if sys.argv[1:] else None,
        "config": config.to_dict(),
        "bf16_autocast": trainer.use_bf16,
        "train_seconds_this_run": round(time.perf_counter() - start, 1),
        "metrics": entry.evaluate(model),
        "params": sum(p.numel() for p in model.parameters()),
        "machine": machine_facts(),
    }
    manifest["world_size"] = trainer.dist.world_size
    if trainer.dist.is_main:  # under torchrun every rank holds the same weights; one writes
        save_tensors(out / "model.safetensors", model.state_dict())
        write_json(out / "manifest.json", manifest)
    return manifest

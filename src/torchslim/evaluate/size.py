"""Model size as saved: parameters counted, and bytes of the safetensors file written for it."""

from __future__ import annotations

import tempfile
from pathlib import Path

from torch import nn

from torchslim._io import save_tensors


def parameter_count(model: nn.Module) -> int:
    """Number of parameters (shared parameters counted once).

    A wrapper around a compiled runtime (``torchslim.deploy.DeployedModel``) holds no torch
    parameters; it answers with its own ``parameter_count()`` method.
    """
    own = getattr(model, "parameter_count", None)
    if callable(own):
        return int(own())
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def saved_size_bytes(model: nn.Module) -> int:
    """Bytes on disk of the model's state dict saved as safetensors (the artifact format).

    A model that defines ``saved_size_bytes()`` (a deployed ONNX/OpenVINO wrapper) reports the
    bytes of its own artifact files instead.
    """
    own = getattr(model, "saved_size_bytes", None)
    if callable(own):
        return int(own())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        save_tensors(path, model.state_dict())
        return path.stat().st_size

"""The ``torch-int-mm`` candidate of ``deploy_text_int8``: the encoder's Linear layers on
``torch._int_mm`` (dynamic per-token int8 inputs, per-channel int8 weights), everything else
torch fp32 eager; saved as safetensors + JSON and rebuilt from the Hugging Face config.

Only a model that can be rebuilt without pickle is a candidate: a Hugging Face
``PreTrainedModel`` from ``transformers``, bare or inside the zoo's ``SentenceEncoder``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchslim.deploy.config import DeployError
from torchslim.deploy.torch_int8 import (
    Int8MMConfig,
    apply_int8_manifest,
    int8_manifest,
    to_int8_mm,
)

ARCHITECTURE = "architecture.json"
WEIGHTS = "model.safetensors"
WRAPPERS = ("SentenceEncoder",)  # zoo wrappers rebuilt by name (torchslim.zoo.text)


def describe_architecture(model: nn.Module) -> dict[str, Any]:
    """How to rebuild ``model`` without pickle: its transformers class and config.

    Raises:
        DeployError: the model is neither a transformers model nor a SentenceEncoder of one.
    """
    from transformers import PreTrainedModel

    from torchslim.zoo.text import SentenceEncoder

    wrapper, inner = None, model
    if isinstance(model, SentenceEncoder):
        wrapper, inner = "SentenceEncoder", model.encoder
    if not isinstance(inner, PreTrainedModel):
        raise DeployError(
            f"torch-int-mm saves a transformers model (or a zoo SentenceEncoder of one) by its "
            f"config; {type(model).__name__} cannot be rebuilt without pickle."
        )
    options = {}
    if hasattr(inner, "pooler"):  # BertModel(add_pooling_layer=...)
        options["add_pooling_layer"] = inner.pooler is not None
    return {
        "wrapper": wrapper,
        "transformers_class": type(inner).__name__,
        "config": inner.config.to_dict(),
        "attn_implementation": getattr(inner.config, "_attn_implementation", None),
        "options": options,
    }


def rebuild_architecture(description: dict[str, Any]) -> nn.Module:
    """The fp32 skeleton (random weights) described by :func:`describe_architecture`."""
    import transformers

    from torchslim.zoo.text import SentenceEncoder

    name = str(description["transformers_class"])
    model_class = getattr(transformers, name, None)
    if not isinstance(model_class, type) or not issubclass(
        model_class, transformers.PreTrainedModel
    ):
        raise DeployError(f"{name!r} is not a transformers model class")
    config_class = model_class.config_class
    if config_class is None:
        raise DeployError(f"{name!r} has no config class to rebuild it from")
    config = config_class.from_dict(description["config"])
    if description.get("attn_implementation"):
        config._attn_implementation = description["attn_implementation"]
    inner = model_class(config, **description.get("options", {}))
    wrapper = description.get("wrapper")
    if wrapper is None:
        return inner.eval()
    if wrapper not in WRAPPERS:
        raise DeployError(f"unknown model wrapper {wrapper!r}; known: {WRAPPERS}")
    return SentenceEncoder(inner).eval()


class TorchInt8TextRunner:
    """The int8 torch model called with torch tensors (under ``inference_mode``)."""

    backend = "torch-int8"

    def __init__(self, model: nn.Module, threads: int, fp32_layers: dict[str, str]) -> None:
        self.model, self.threads, self.fp32_layers = model.eval(), threads, dict(fp32_layers)

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(*inputs)

    def fp32_ops(self) -> list[str]:
        """Linear layers left in fp32 (and why), and the ops torch runs in fp32 around them."""
        return [
            *(f"Linear {name}: {why}" for name, why in self.fp32_layers.items()),
            "embeddings, LayerNorm, GELU, residual adds, pooling (torch fp32 eager)",
            "attention: QK^T, softmax, attention x V (torch fp32)",
        ]

    def settings(self) -> dict[str, Any]:
        return {
            "engine": "torch._int_mm",
            "threads_when_measured": self.threads,
            "threads": "torch.get_num_threads() of the calling process (torch has no session)",
            "activations": "int8 symmetric, dynamic per token",
            "weights": "int8 symmetric per output channel",
            "fp32_layers": self.fp32_layers,
        }


def build_torch_int8(model: nn.Module, workdir: Path, threads: int) -> TorchInt8TextRunner:
    """Convert a copy of ``model`` and write its files (weights, int8 layers, architecture)."""
    from torchslim._io import save_tensors, write_json

    description = describe_architecture(model)
    converted = copy.deepcopy(model).eval()
    result = to_int8_mm(converted, Int8MMConfig())
    save_tensors(workdir / WEIGHTS, converted.state_dict())
    write_json(workdir / ARCHITECTURE, {**description, "int8": int8_manifest(converted)})
    return TorchInt8TextRunner(converted, threads, result.fp32_layers)


def load_torch_int8(directory: Path, settings: dict[str, Any], threads: int) -> TorchInt8TextRunner:
    """Rebuild the runner from ``architecture.json`` + ``model.safetensors`` (no pickle)."""
    from torchslim._io import load_state_dict_strict, load_tensors

    description = json.loads((directory / ARCHITECTURE).read_text())
    model = rebuild_architecture(description)
    apply_int8_manifest(model, description["int8"])
    load_state_dict_strict(model, load_tensors(directory / WEIGHTS), str(directory))
    return TorchInt8TextRunner(model, threads, dict(settings.get("fp32_layers", {})))

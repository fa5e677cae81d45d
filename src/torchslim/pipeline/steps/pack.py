"""The ``pack`` step: the artifact's weights as one packed file (``model.packed``: codebooks,
codes, relative sparse indices, Huffman or zstd per stream; arXiv 1510.00149) instead of
``model.safetensors``; ``torchslim.load`` reads it back bit for bit. Must be the last stage."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from torchslim.pack.apply import PackConfig, PackResult
from torchslim.pipeline.registry import Step, StepContext, StepResult, register_step

PACKED = "model.packed"


def write_packed_weights(model: nn.Module, options: PackConfig, directory: Path) -> Path:
    """``directory/model.packed`` of ``model`` (masks folded, fake-quant layers dequantized;
    a codebook that a group of clustered layers shares stored once)."""
    return _pack(model, options, directory / PACKED).path


def run_pack(model: nn.Module, options: PackConfig, context: StepContext) -> StepResult:
    with tempfile.TemporaryDirectory(prefix="torchslim-pack-") as scratch:
        result = _pack(model, options, Path(scratch) / PACKED)
    return StepResult(result.summary())


def _pack(model: nn.Module, options: PackConfig, path: Path) -> PackResult:
    from torchslim.pack import pack_model
    from torchslim.pipeline.artifact import storable
    from torchslim.share import codebook_groups

    return pack_model(storable(model), path, options, codebook_groups(model))


def unchanged(model: nn.Module, options: Any, record: dict[str, Any], context: Any) -> None:
    """Packing changes no weight and no shape."""


register_step(
    Step(
        "pack",
        PackConfig,
        run_pack,
        "store the weights packed (sparse indices, codebooks, Huffman/zstd)",
        restore=unchanged,
        weights_file=write_packed_weights,
    )
)

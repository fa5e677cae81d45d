"""The ``compressed_tensors`` step: the quantized model written as a compressed-tensors Hugging
Face directory and read back by transformers, which the pipeline then measures.

The earlier quantize stage must be weight-only with an integer grid (int/uint, 1-8 bits, per
tensor, per channel or in groups: GPTQ/AWQ/RTN codes are written as they are;
``deploy.compressed_tensors_export``). What this step returns is the model
``from_pretrained`` builds from the written files, so the artifact's figures (perplexity,
size of ``model.safetensors``) are those of what a transformers user loads; the artifact is
that directory (``config.json`` with ``quantization_config``, ``model.safetensors``, the
tokenizer files) beside ``manifest.json``. It must be the last stage.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from torchslim.pipeline.registry import Step, StepContext, StepResult, register_step


@dataclass(frozen=True)
class CompressedTensorsOptions:
    """No options: the formats come from the quantize stage, the layout from the model."""


def run_compressed_tensors(
    model: nn.Module, options: CompressedTensorsOptions, context: StepContext
) -> StepResult:
    from torchslim._hf_directory import hf_directory
    from torchslim.deploy.compressed_tensors_export import export_compressed_tensors
    from torchslim.deploy.compressed_tensors_model import CompressedTensorsModel
    from torchslim.pipeline.artifact import source_directory

    source = source_directory(context.entry)
    with tempfile.TemporaryDirectory(prefix="torchslim-ct-") as scratch:
        export = export_compressed_tensors(model, Path(scratch) / "hf", source)
        prefix = hf_directory(model).prefix
        runtime = CompressedTensorsModel.from_export(export, model, prefix).to(context.device)
    formats = sorted(set(export.layers.values()))
    summary = {"weights_bytes": export.weights_bytes, "layers_packed": len(export.layers),
               "formats": formats, "files": sorted(runtime.artifact)}  # fmt: skip
    return StepResult(summary, model=runtime)


register_step(
    Step(
        "compressed_tensors",
        CompressedTensorsOptions,
        run_compressed_tensors,
        "compressed-tensors HF directory transformers loads (weight-only int/uint grids)",
        final=True,
        needs_quantized=True,
    )
)

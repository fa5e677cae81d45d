"""The ``gguf`` step: the quantized LLM written as GGUF and run on llama.cpp's kernels.

The earlier quantize stage must use a llama.cpp block grid (int4-g32 = Q4_0, uint4-g32 = Q4_1,
int8-g32 = Q8_0); GPTQ/AWQ codes are packed as they are (``deploy.gguf_llama``). Tokenizer,
hyper-parameters and the tensors the model does not quantize come from a template GGUF: the
zoo entry's own file (SmolLM2) unless ``template`` names one. It must be the last stage: what
it returns is a llama.cpp runtime, whose perplexity the pipeline then measures.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from torchslim.errors import ConfigError
from torchslim.pipeline.registry import Step, StepContext, StepResult, register_step


@dataclass(frozen=True)
class GGUFOptions:
    """``template``: a GGUF of the same model (default: the zoo entry's own GGUF);
    ``threads`` llama.cpp uses (default: the run's threads, else 2)."""

    template: str = ""
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}")


def run_gguf(model: nn.Module, options: GGUFOptions, context: StepContext) -> StepResult:
    from torchslim.deploy.gguf_llama import export_gguf
    from torchslim.deploy.llama_cpp_model import LlamaCppModel

    template = Path(options.template) if options.template else _entry_gguf(context)
    if not template.is_file():
        raise ConfigError(f"gguf template {template} is not a file")
    with tempfile.TemporaryDirectory() as scratch:
        export = export_gguf(model, template, Path(scratch) / "model.gguf")
        data = export.path.read_bytes()
    runtime = LlamaCppModel(data, options.threads or context.threads or 2)
    summary = {"gguf_bytes": len(data), "layers_packed": len(export.written),
               "block_types": sorted(set(export.written.values())),
               "tensors_from_template": export.copied}  # fmt: skip
    return StepResult(summary, model=runtime)


def _entry_gguf(context: StepContext) -> Path:
    entry_file = getattr(context.entry, "gguf_file", None)
    if entry_file is None:
        raise ConfigError(
            f"{context.entry.name} has no GGUF of its own: give the gguf step a template "
            "(a GGUF of the same model)"
        )
    return Path(entry_file())


register_step(
    Step(
        "gguf",
        GGUFOptions,
        run_gguf,
        "GGUF on llama.cpp's kernels (Q4_0 / Q4_1 / Q8_0 from the quantize stage)",
        final=True,
        needs_quantized=True,
    )
)

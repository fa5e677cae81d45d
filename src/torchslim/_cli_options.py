"""The model options every model-taking command shares, declared once for typer.

Each command declares ``weights: WeightsOption = None`` and so on, then calls
``model_options(...)`` to get one validated ``ModelOptions``. This module imports no torch, so
``torchslim --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from torchslim.zoo.options import ModelOptions

ModelArgument = Annotated[
    str,
    typer.Argument(
        help="Zoo name (torchslim zoo list), package.module:factory, Hugging Face directory or "
        ".pt2 file."
    ),
]
WeightsOption = Annotated[
    Path | None,
    typer.Option(help="Weights (.safetensors, or a .pt state dict) for a factory or zoo model."),
]
InputShapeOption = Annotated[
    str | None, typer.Option(help="Input shape, batch first, e.g. 1,3,32,32 or 1,128.")
]
InputDtypeOption = Annotated[
    str | None,
    typer.Option(help="Input dtype: float32 (default), float16, bfloat16, int64, int32, bool."),
]
VocabSizeOption = Annotated[
    int | None, typer.Option(min=1, help="Integer inputs are token ids in [0, N).")
]
SeqLenOption = Annotated[int | None, typer.Option(min=1, help="Text models: tokens per sequence.")]
DataOption = Annotated[
    Path | None,
    typer.Option(
        help="Your data: a folder of images, a .npy/.safetensors tensor file, or a .txt file "
        "(language models); split into disjoint calibration and evaluation parts."
    ),
]
DeviceOption = Annotated[str, typer.Option(help="cpu | cuda | cuda:N.")]
ThreadsOption = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="Threads of torch and of a deployed runtime (ONNX Runtime, OpenVINO, llama.cpp); "
        "default: OMP_NUM_THREADS or all cores.",
    ),
]


def model_options(
    weights: Path | None = None,
    input_shape: str | None = None,
    input_dtype: str | None = None,
    vocab_size: int | None = None,
    seq_len: int | None = None,
    data: Path | None = None,
) -> ModelOptions:
    """One validated ``ModelOptions`` from the command-line values."""
    from torchslim.zoo.options import ModelOptions, parse_shape

    return ModelOptions(weights, parse_shape(input_shape), input_dtype, vocab_size, seq_len, data)

"""The built-in steps; importing this package registers them."""

from torchslim.pipeline.steps import (
    deploy,
    gguf,
    mixed_precision,
    prune,
    qat,
    quantize,
    quantize_accuracy,
    student,
    train,
    transforms,
)

__all__ = [
    "deploy",
    "gguf",
    "mixed_precision",
    "prune",
    "qat",
    "quantize",
    "quantize_accuracy",
    "student",
    "train",
    "transforms",
]

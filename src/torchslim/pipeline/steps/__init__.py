"""The built-in steps; importing this package registers them."""

from torchslim.pipeline.steps import (
    compressed_tensors,
    deploy,
    gguf,
    lowrank,
    mixed_precision,
    pack,
    prune,
    qat,
    quantize,
    quantize_accuracy,
    share,
    student,
    train,
    transforms,
)

__all__ = [
    "compressed_tensors",
    "deploy",
    "gguf",
    "lowrank",
    "mixed_precision",
    "pack",
    "prune",
    "qat",
    "quantize",
    "quantize_accuracy",
    "share",
    "student",
    "train",
    "transforms",
]

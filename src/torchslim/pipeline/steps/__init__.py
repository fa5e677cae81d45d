"""The built-in steps; importing this package registers them."""

from torchslim.pipeline.steps import (
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

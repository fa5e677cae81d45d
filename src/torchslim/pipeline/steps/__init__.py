"""The built-in steps; importing this package registers them."""

from torchslim.pipeline.steps import deploy, prune, quantize, student, train

__all__ = ["deploy", "prune", "quantize", "student", "train"]

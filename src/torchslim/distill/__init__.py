"""Distillation: loss modules and a ``Distiller`` that plugs into the shared ``Trainer``.

Hinton et al. (arXiv:1503.02531) soft targets, FitNets hints (arXiv:1412.6550), attention
transfer (arXiv:1612.03928), TinyBERT/MiniLM hidden-state and attention-map distillation; students
built by dropping teacher layers as DistilBERT does (arXiv:1910.01108).
"""

from torchslim.distill.config import DistillConfig, LayerMatch
from torchslim.distill.distiller import Distiller
from torchslim.distill.losses import (
    AttentionMapLoss,
    AttentionTransferLoss,
    DistillShapeError,
    FeatureLoss,
    KDLoss,
)
from torchslim.distill.student import drop_layers, layer_stacks, load_reshaped

__all__ = [
    "AttentionMapLoss",
    "AttentionTransferLoss",
    "DistillConfig",
    "DistillShapeError",
    "Distiller",
    "FeatureLoss",
    "KDLoss",
    "LayerMatch",
    "drop_layers",
    "layer_stacks",
    "load_reshaped",
]

"""Tiny seeded models and data for unit tests (seconds, no assets)."""

from __future__ import annotations

import torch
from torch import nn


def tiny_convnet(seed: int = 0) -> nn.Module:
    """Conv-BN-ReLU-pool-linear on (B, 1, 8, 8) inputs, 3 classes."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, 3),
    )


def tiny_images(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Separable synthetic data: the class sets the mean brightness of the image."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=g)
    images = torch.randn(n, 1, 8, 8, generator=g) * 0.3 + labels[:, None, None, None].float()
    return images, labels

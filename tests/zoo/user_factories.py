"""Factories that tests/zoo/test_user_models.py resolves by spec (``user_factories:<name>``)."""

from __future__ import annotations

from torch import nn


def small_convnet() -> nn.Module:
    """(B, 3, 8, 8) -> (B, 2); a 1-channel input is rejected by the first conv."""
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(4, 2),
    )  # fmt: skip


def other_convnet() -> nn.Module:
    """Same input, different layer widths: its weights do not fit ``small_convnet``."""
    return nn.Sequential(nn.Conv2d(3, 6, 3), nn.Flatten())


def not_a_module() -> dict[str, int]:
    return {"layers": 2}


def needs_arguments(width: int) -> nn.Module:
    return nn.Linear(width, width)

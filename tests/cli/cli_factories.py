"""Factories that tests/cli resolve by spec (``cli_factories:<name>``)."""

from __future__ import annotations

import torch
from torch import nn


class TokenNet(nn.Module):
    """Token ids (B, T) in [0, 50) -> (B, 5): an embedding, one SDPA head, a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.qkv = nn.Linear(16, 48)
        self.head = nn.Linear(16, 5)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(self.embed(ids)).chunk(3, -1)  # (B, T, 16) each
        attended = nn.functional.scaled_dot_product_attention(q, k, v)  # (B, T, 16)
        return self.head(attended.mean(1))  # (B, 5)


def token_net() -> nn.Module:
    return TokenNet()


def small_cnn() -> nn.Module:
    """(B, 1, 12, 12) -> (B, 10)."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, 10),
    )  # fmt: skip

"""Tiny seeded models and data for unit tests (seconds, no assets)."""

from __future__ import annotations

import torch
from torch import nn

from torchslim.profile.latency_model import ClassFit, LatencyModel


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


def tiny_sentence_encoder() -> nn.Module:
    """A seeded 2-layer BERT (hidden 32, 2 heads) with mean pooling + L2 norm, like minilm."""
    from transformers import BertConfig, BertModel

    from torchslim.zoo.text import SentenceEncoder

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=500, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64,
    )  # fmt: skip
    return SentenceEncoder(BertModel(config, add_pooling_layer=False)).eval()


def padded_tokens(batch: int = 6, seq: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and a mask whose rows have 5..seq-8 real tokens, then padding (id 0)."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 500, (batch, seq), generator=generator)  # (B, T)
    lengths = torch.linspace(5, seq - 8, batch).long()  # (B,)
    mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()  # (B, T)
    return ids * mask, mask


# A fixed latency model for unit tests: no calibration of the test machine.
FAKE_LATENCY = LatencyModel(
    {
        "view": ClassFit([(0, 0, 1e-6)]),
        "elementwise": ClassFit([(1e3, 8e3, 2e-6), (1e6, 8e6, 1e-4)]),
        "conv": ClassFit([(1e4, 1e4, 5e-6), (1e8, 1e6, 2e-3)]),
    },
    module_call_s=2e-6,
    threads=1,
    device="cpu",
    op_overhead_s=5e-6,
)  # per-op overheads make a block cost more than its MACs, as on a real CPU

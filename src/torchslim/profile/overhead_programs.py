"""Small programs whose time is almost all framework overhead, to calibrate what the latency
model charges per ATen op, per module call and per Python/C call (``latency_model``).

None of them is a zoo model: a chain of tiny ATen ops, nested modules, hand-written transformer
blocks and a residual conv stack, and (when transformers is installed) random-init two-layer
DistilBERT, Qwen2 and ConvNeXt configs, whose forwards carry the Python a transformers model
runs around its ops (config lookups, mask helpers, output dataclasses). Tensors are tiny, so
what is left after the per-class work estimate is overhead; two wider programs write activations
of 0.1-0.5 MiB, to price what a forward's fresh memory costs beyond its ops replayed alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

Program = tuple[str, nn.Module, tuple[Any, ...]]


class _OpChain(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(200):
            x = torch.add(x, x)
        return x


class _Block(nn.Module):
    """A pre-norm transformer block written with nn.Linear, LayerNorm and SDPA."""

    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.ModuleList(nn.Linear(dim, dim) for _ in range(3))
        self.out = nn.Linear(dim, dim)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.up, self.down = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        y = self.norm1(x)
        q, k, v = (p(y).view(b, t, self.heads, c // self.heads).transpose(1, 2) for p in self.qkv)
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, c)
        x = x + self.out(attended)
        return x + self.down(F.gelu(self.up(self.norm2(x))))


class _ConvStack(nn.Module):
    def __init__(self, channels: int = 4) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU(),
            )
            for _ in range(6)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = x + block(x)
        return x.mean((2, 3))


class _FirstOutput(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: Any) -> Any:
        return self.model(*inputs)[0]


def _transformers_programs() -> Iterator[tuple[str, Callable[[], nn.Module], tuple[Any, ...]]]:
    try:
        import transformers as hf
    except ImportError:  # an optional part of the calibration
        return
    ids = torch.randint(0, 100, (1, 8))
    yield (
        "distilbert",
        lambda: hf.DistilBertModel(
            hf.DistilBertConfig(vocab_size=100, dim=16, n_layers=2, n_heads=2, hidden_dim=32)
        ),
        (ids,),
    )
    yield (
        "qwen2",
        lambda: hf.Qwen2Model(
            hf.Qwen2Config(
                vocab_size=100,
                hidden_size=16,
                intermediate_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                num_key_value_heads=1,
            )
        ),
        (ids,),
    )
    yield (
        "convnext",
        lambda: hf.ConvNextModel(
            hf.ConvNextConfig(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], image_size=32)
        ),
        (torch.randn(1, 3, 32, 32),),
    )


def overhead_programs(device: torch.device) -> Iterator[Program]:
    """(name, model in eval mode on ``device``, inputs) for each calibration program."""
    nested: nn.Module = nn.Identity()
    for _ in range(50):
        nested = nn.Sequential(nested)
    blocks = nn.Sequential(*(_Block() for _ in range(4)))
    plain: list[tuple[str, nn.Module, tuple[Any, ...]]] = [
        ("op_chain", _OpChain(), (torch.ones(4),)),
        ("nested_modules", nested, (torch.ones(1),)),
        ("transformer_blocks", blocks, (torch.randn(1, 4, 16),)),
        ("conv_stack", _ConvStack(), (torch.randn(1, 4, 8, 8),)),
        # activations of 0.1-0.5 MiB: what writing fresh memory costs beyond the replayed ops
        ("wide_conv_stack", _ConvStack(16), (torch.randn(8, 16, 32, 32),)),
        ("wide_blocks", nn.Sequential(_Block(64), _Block(64)), (torch.randn(8, 64, 64),)),
    ]
    for name, model, inputs in plain:
        yield name, model.to(device).eval(), tuple(t.to(device) for t in inputs)
    torch.manual_seed(0)
    for name, build, inputs in _transformers_programs():
        model = _FirstOutput(build()).to(device).eval()
        yield f"transformers_{name}", model, tuple(t.to(device) for t in inputs)

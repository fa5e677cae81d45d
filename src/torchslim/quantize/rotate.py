"""Rotations that remove activation outliers before weight quantization (QuaRot, Ashkboos et al.,
arXiv:2404.00456; SpinQuant, Liu et al., arXiv:2405.16406), offline and exact in float.

A LLaMA-style decoder computes the same function when its residual stream is multiplied by an
orthogonal matrix Q (h' = h Q): RMSNorm commutes with Q once its weight is folded into the
Linears it feeds, every Linear reading the stream becomes W Q, every Linear writing it Q^T W,
the embedding E Q and the head W_head Q. The outliers of a few residual channels are spread
over all of them, so a 4- or 3-bit grid fits the rotated weights better. A second rotation H
per attention head (R2 of the papers) acts on v_proj's outputs and o_proj's inputs.

Q is a randomized Hadamard matrix where the width is a power of two times a small factor m
(SmolLM2's 576 = 9 x 64): kron(R_m, H_2^k / sqrt(2^k)) with R_m a seeded random orthogonal
matrix, then random signs. The online rotations of the papers (before down_proj, of K and of
activations for W4A4) change the forward pass and are not done here: this is for weight-only
and W8A8 formats.

The head is untied from the embedding (the rotated head carries the final norm's weight, the
embedding does not), which adds ``vocab x hidden`` float parameters to a tied model.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from torchslim._compress import untouched_on_failure
from torchslim.errors import ConfigError, reject_unknown_keys
from torchslim.quantize._blocks import BlockWalkError, find_blocks

READ_STREAM = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj",
               "mlp.up_proj")  # fmt: skip
WRITE_STREAM = ("self_attn.o_proj", "mlp.down_proj")
NORM_FEEDS = {
    "input_layernorm": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "post_attention_layernorm": ("mlp.gate_proj", "mlp.up_proj"),
}


@dataclass(frozen=True)
class RotateConfig:
    """Options of :func:`rotate_`.

    Attributes:
        seed: seed of the random signs and the random orthogonal factor.
        heads: also rotate each attention head's values (v_proj outputs, o_proj inputs).
    """

    seed: int = 0
    heads: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"RotateConfig.seed={self.seed!r}; allowed: an int >= 0.")
        if not isinstance(self.heads, bool):
            raise ConfigError(f"RotateConfig.heads={self.heads!r}; allowed: bool.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RotateConfig:
        reject_unknown_keys(cls, values)
        return cls(**values)


def hadamard(n: int) -> Tensor:
    """The Sylvester Hadamard matrix of order ``n`` (a power of two), entries +-1."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"Sylvester Hadamard matrices exist for powers of two, not {n}")
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def random_rotation(n: int, generator: torch.Generator) -> Tensor:
    """A randomized Hadamard-based orthogonal matrix (n, n) in float64."""
    power = n & -n  # the largest power of two dividing n
    rest = n // power
    h = hadamard(power) / math.sqrt(power)
    if rest > 1:
        gaussian = torch.randn(rest, rest, generator=generator, dtype=torch.float64)
        r, _ = torch.linalg.qr(gaussian)
        h = torch.kron(r.contiguous(), h.contiguous())
    signs = torch.randint(0, 2, (n,), generator=generator, dtype=torch.float64) * 2 - 1
    return signs[:, None] * h  # diag(signs) @ h: still orthogonal


def _linear(block: nn.Module, name: str) -> nn.Linear:
    module = block.get_submodule(name)
    if not isinstance(module, nn.Linear):
        raise BlockWalkError(f"{name} is {type(module).__name__}, not a Linear: rotate_ "
                             "needs a LLaMA-style block")  # fmt: skip
    return module


def _norm_weight(norm: nn.Module) -> nn.Parameter:
    weight = getattr(norm, "weight", None)
    if not isinstance(weight, nn.Parameter) or getattr(norm, "bias", None) is not None:
        raise BlockWalkError(
            f"{type(norm).__name__} is not an RMSNorm with a weight and no bias: a norm that "
            "subtracts the mean (LayerNorm) does not commute with a rotation"
        )
    return weight


def _set(layer: nn.Linear, weight: Tensor) -> None:
    layer.weight.data = weight.to(layer.weight.dtype).contiguous()


def _fold_norm(norm: nn.Module, layers: list[nn.Linear]) -> None:
    """norm(x) W^T = (x / rms) diag(g) W^T: move g into the Linears' input columns."""
    weight = _norm_weight(norm)
    g = weight.detach().double()
    for layer in layers:
        _set(layer, layer.weight.double() * g[None, :])
    weight.data.fill_(1.0)


def _parts(model: nn.Module, prefix: str) -> tuple[nn.Embedding, nn.Module, nn.Linear]:
    """The embedding, the final norm and the head around the block list ``prefix``."""
    parent = model.get_submodule(prefix.rsplit(".", 1)[0]) if "." in prefix else model
    embed = getattr(parent, "embed_tokens", None)
    norm = getattr(parent, "norm", None)
    heads = [m for n, m in model.named_modules() if n.endswith("lm_head")]
    if not isinstance(embed, nn.Embedding) or norm is None or len(heads) != 1:
        raise BlockWalkError(
            "rotate_ needs a LLaMA-style decoder: embed_tokens and norm beside the block list "
            f"{prefix}, and one lm_head Linear"
        )
    head = heads[0]
    if not isinstance(head, nn.Linear):
        raise BlockWalkError(f"lm_head is {type(head).__name__}, not a Linear")
    return embed, norm, head


def _head_dim(block: nn.Module) -> int:
    attention = block.get_submodule("self_attn")
    value = getattr(attention, "head_dim", None)
    if not isinstance(value, int):
        raise BlockWalkError("self_attn has no integer head_dim: cannot rotate per head")
    return value


def _untie(model: nn.Module, head: nn.Linear, embed: nn.Embedding) -> bool:
    """Give the head its own weight where it shares the embedding's; whether it did."""
    if head.weight is not embed.weight:
        return False
    head.weight = nn.Parameter(embed.weight.detach().clone())
    for module in model.modules():  # the HF config says so, or save_pretrained ties them again
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "tie_word_embeddings"):
            config.tie_word_embeddings = False
    return True


def untie_head(model: nn.Module) -> bool:
    """Give a decoder's lm_head its own weight where it shares the embedding's; whether it did."""
    prefix, _ = find_blocks(model)
    embed, _, head = _parts(model, prefix)
    return _untie(model, head, embed)


def rotate_(model: nn.Module, config: RotateConfig | None = None) -> dict[str, Any]:
    """Rotate a LLaMA-style decoder's residual stream (and each head's values), in place.

    Run it on the float model before ``quantize_`` (and GPTQ/RTN): the float function is
    unchanged up to rounding (checked by the tests), and the weights quantize with less error.

    Returns:
        What was done: hidden width, head dimension, blocks, whether the head was untied.

    Raises:
        BlockWalkError: not a LLaMA-style decoder (block list, RMSNorms, q/k/v/o and
            gate/up/down Linears, embed_tokens, norm, lm_head). The model is left untouched.
    """
    config = config or RotateConfig()
    with untouched_on_failure(model), torch.no_grad():
        prefix, blocks = find_blocks(model)
        embed, final_norm, head = _parts(model, prefix)
        hidden = embed.weight.shape[1]
        generator = torch.Generator().manual_seed(config.seed)
        q = random_rotation(hidden, generator)  # (C, C)
        head_dim = _head_dim(blocks[0]) if config.heads else 0
        h = random_rotation(head_dim, generator) if config.heads else None
        untied = _untie(model, head, embed)
        _fold_norm(final_norm, [head])
        embed.weight.data = (embed.weight.double() @ q).to(embed.weight.dtype)
        _set(head, head.weight.double() @ q)
        for block in blocks:
            for norm_name, fed in NORM_FEEDS.items():
                _fold_norm(block.get_submodule(norm_name), [_linear(block, n) for n in fed])
            for name in READ_STREAM:
                layer = _linear(block, name)
                _set(layer, layer.weight.double() @ q)
            for name in WRITE_STREAM:
                layer = _linear(block, name)
                _set(layer, q.T @ layer.weight.double())
                if layer.bias is not None:
                    layer.bias.data = (layer.bias.double() @ q).to(layer.bias.dtype)
            if h is not None:
                _rotate_heads(block, h, head_dim)
    return {"hidden": hidden, "head_dim": head_dim, "blocks": len(blocks), "untied_head": untied,
            "seed": config.seed}  # fmt: skip


def _rotate_heads(block: nn.Module, h: Tensor, head_dim: int) -> None:
    """Each head's values times h: v_proj's output rows per head, o_proj's input columns per
    head (attention mixes tokens, not a head's channels, so softmax(.) V h = (softmax(.) V) h)."""
    v, o = _linear(block, "self_attn.v_proj"), _linear(block, "self_attn.o_proj")
    if v.weight.shape[0] % head_dim or o.weight.shape[1] % head_dim:
        raise BlockWalkError(f"v_proj/o_proj widths are not multiples of head_dim {head_dim}")
    kv_heads = v.weight.shape[0] // head_dim
    blocks_v = torch.block_diag(*([h.T] * kv_heads))  # rows: out = h^T-rotated per head
    _set(v, blocks_v @ v.weight.double())
    if v.bias is not None:
        v.bias.data = (blocks_v @ v.bias.double()).to(v.bias.dtype)
    heads = o.weight.shape[1] // head_dim
    _set(o, o.weight.double() @ torch.block_diag(*([h] * heads)))


__all__ = ["RotateConfig", "hadamard", "random_rotation", "rotate_", "untie_head"]

"""Reading the attention probabilities of a Hugging Face attention module while it runs.

Why: a value projection's error reaches the block through the attention, O = A V, so the
output error of v's weights is tr(dW X^T A^T A X dW^T), not tr(dW X^T X dW^T). With an attention
sink (most queries attend to the first token) A^T A weights the sink token's row hundreds of
times more than X^T X does; GPTQ on the plain input Hessian moves the rounding error exactly
there and loses to round-to-nearest (measured on SmolLM2-135M: perplexity 61.5 vs 50.9 with
GPTQ on v_proj alone).

The probe is registered in transformers' ``AttentionInterface`` and switched on for one module's
config while a block runs; it computes the same output as eager attention (causal when no mask
is given) and hands the probabilities to a callback.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

PROBE_NAME = "torchslim_attention_probe"
_callbacks: dict[int, Callable[[Tensor, Tensor], None]] = {}


def probes_attention(module: nn.Module) -> bool:
    """Whether ``module`` is a transformers attention that calls the attention interface."""
    config = getattr(module, "config", None)
    return (
        config is not None
        and hasattr(config, "_attn_implementation")
        and hasattr(module, "head_dim")
    )


def _probe(
    module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
    scaling: float, dropout: float = 0.0, **kwargs: Any,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Eager attention reporting its probabilities: query (B, H, T, d), key/value (B, Hk, S, d)."""
    groups = query.shape[1] // key.shape[1]
    keys = key.repeat_interleave(groups, dim=1)  # (B, H, S, d), as transformers' repeat_kv
    values = value.repeat_interleave(groups, dim=1)  # (B, H, S, d)
    scores = (query @ keys.transpose(2, 3)).float() * scaling  # (B, H, T, S)
    T, S = scores.shape[-2:]
    if attention_mask is None:
        causal = torch.ones(T, S, dtype=torch.bool).tril(S - T)  # (T, S)
        scores = scores.masked_fill(~causal, float("-inf"))
    elif attention_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attention_mask[..., :S], float("-inf"))
    else:
        scores = scores + attention_mask[..., :S]
    probs = torch.softmax(scores, dim=-1)  # (B, H, T, S)
    callback = _callbacks.get(id(module))
    if callback is not None:
        callback(probs, value)
    output = (probs.to(values.dtype) @ values).transpose(1, 2).contiguous()  # (B, T, H, d)
    return output, probs


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(PROBE_NAME, _probe)


@contextmanager
def attention_probe(
    module: nn.Module, callback: Callable[[Tensor, Tensor], None]
) -> Iterator[None]:
    """Inside the ``with``, ``module`` runs the probe: ``callback(probs (B, H, T, S), value
    (B, Hk, S, d))`` on every call."""
    _register()
    config: Any = module.config
    previous = config._attn_implementation
    config._attn_implementation = PROBE_NAME
    _callbacks[id(module)] = callback
    try:
        yield
    finally:
        config._attn_implementation = previous
        _callbacks.pop(id(module), None)

"""Cross-layer equalization (Nagel et al., "Data-Free Quantization", arXiv:1906.04721).

For a layer pair W1 -> f -> W2 where f commutes with positive per-channel scales (ReLU, max/avg
pooling, flatten), output channel i of W1 is divided by s_i and input channel i of W2 multiplied
by it; the network computes the same function. s_i = sqrt(r1_i / r2_i), with r1_i and r2_i the
ranges of channel i in W1 (output) and W2 (input), equalizes both ranges to sqrt(r1_i * r2_i),
so a per-tensor (or per-channel) grid wastes less of its range on a few wide channels. Fold
BatchNorm first (``fold_batchnorm_``), since a BN between the two layers does not commute.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from torchslim._compress import untouched_on_failure
from torchslim.errors import ConfigError
from torchslim.quantize._graph import Chain, layer_chains, trace
from torchslim.quantize.modules import QuantConv2d, QuantLinear

Weighted = nn.Conv2d | nn.Linear


def _consumer_columns(consumer: Weighted, channels: int) -> Tensor:
    """The consumer's weight viewed (out, channels, rest): input channel i is [:, i]."""
    weight = consumer.weight.detach()
    return weight.reshape(weight.shape[0], channels, -1)  # (out, C, rest)


def equalize_pair(producer: Weighted, consumer: Weighted) -> Tensor:
    """Equalize one pair in place; returns the scales s (C,)."""
    w1 = producer.weight.detach()
    channels = w1.shape[0]
    r1 = w1.reshape(channels, -1).abs().amax(1)  # (C,)
    r2 = _consumer_columns(consumer, channels).abs().amax(dim=(0, 2))  # (C,)
    usable = (r1 > 0) & (r2 > 0)  # (C,) a dead channel keeps scale 1
    s = torch.where(usable, torch.sqrt(r1 / r2.clamp(min=1e-30)), torch.ones_like(r1))  # (C,)
    with torch.no_grad():
        producer.weight.div_(s.view(-1, *([1] * (w1.ndim - 1))))
        if producer.bias is not None:
            producer.bias.div_(s)
        columns = _consumer_columns(consumer, channels)  # (out, C, rest) view of the weight
        columns.mul_(s.view(1, -1, 1))
    for module in (producer, consumer):
        if isinstance(module, (QuantConv2d, QuantLinear)):
            module.weight_quantizer.reset_range(module.weight.detach())
    return s


def equalize_(model: nn.Module, iterations: int = 10) -> list[Chain]:
    """Cross-layer equalize every eligible layer pair of ``model``, in place.

    Args:
        model: a float (or fake-quant) model, traceable by torch.fx, BatchNorm folded.
        iterations: sweeps over all pairs (chains of three or more layers converge over sweeps).

    Returns:
        The pairs equalized.

    Raises:
        ConfigError: ``iterations`` < 1.
        TorchslimError: the model cannot be traced (the model is left untouched).
    """
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ConfigError(f"equalize_ iterations={iterations!r}; allowed: an integer >= 1.")
    with untouched_on_failure(model):
        chains = list(layer_chains(model, trace(model)))
        for _ in range(iterations):
            for chain in chains:
                producer = model.get_submodule(chain.producer)
                consumer = model.get_submodule(chain.consumer)
                assert isinstance(producer, Weighted) and isinstance(consumer, Weighted)
                in_features = consumer.weight.shape[1]
                if in_features % producer.weight.shape[0]:
                    continue  # a reshape other than flatten: not a per-channel mapping
                equalize_pair(producer, consumer)
    return chains

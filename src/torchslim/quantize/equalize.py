"""Cross-layer equalization (Nagel et al., "Data-Free Quantization", arXiv:1906.04721).

For a layer pair W1 -> f -> W2 where f commutes with positive per-channel scales (ReLU, max/avg
pooling, flatten), output channel i of W1 is divided by s_i and input channel i of W2 multiplied
by it; the network computes the same function. s_i = sqrt(r1_i / r2_i), with r1_i and r2_i the
ranges of channel i in W1 (output) and W2 (input), equalizes both ranges to sqrt(r1_i * r2_i),
so a per-tensor (or per-channel) grid wastes less of its range on a few wide channels. Fold
BatchNorm first (``fold_batchnorm_``), since a BN between the two layers does not commute.

Depthwise-separable blocks (conv -> ReLU -> depthwise conv -> ReLU -> conv) are equalized as in
the paper's MobileNet experiments: a depthwise conv (groups = in = out channels) is a consumer
whose filter i takes channel i's scale, and a producer for the next layer. Only exactly
scale-commuting ops may sit between two layers, so the float model's outputs do not change
beyond float rounding: ReLU6 does not commute (relu6(y / s) * s clips at 6 s, not 6), so a pair
through ReLU6 (EfficientNet-Lite, MobileNetV2) is not equalized; the paper replaces ReLU6 by ReLU
first, which changes the float model, and this function does not do that.
"""

from __future__ import annotations

import torch
from torch import Tensor, fx, nn

from torchslim._compress import untouched_on_failure
from torchslim.errors import ConfigError
from torchslim.quantize._graph import (
    Chain,
    is_homogeneous,
    layer_chains,
    module_of,
    single_user,
    trace,
)
from torchslim.quantize.modules import QuantConv2d, QuantLinear

Weighted = nn.Conv2d | nn.Linear


def is_depthwise(module: nn.Module) -> bool:
    """A depthwise conv with multiplier 1: output channel i reads input channel i only."""
    return (
        isinstance(module, nn.Conv2d)
        and module.groups > 1
        and module.groups == module.in_channels == module.out_channels
    )


def _consumer_columns(consumer: Weighted, channels: int) -> Tensor:
    """The consumer's weight viewed (out, channels, rest): input channel i is [:, i]; a depthwise
    conv's filter i is its input channel i's only column."""
    weight = consumer.weight.detach()
    if is_depthwise(consumer):
        return weight.reshape(1, channels, -1)  # (1, C, kH * kW)
    return weight.reshape(weight.shape[0], channels, -1)  # (out, C, rest)


def depthwise_chains(model: nn.Module, graph: fx.Graph) -> list[Chain]:
    """Every Conv2d -> scale-commuting ops -> depthwise Conv2d chain."""
    chains = []
    for node in graph.nodes:
        if not isinstance(module_of(model, node), nn.Conv2d):
            continue
        current = single_user(node)
        while current is not None and is_homogeneous(model, current):
            current = single_user(current)
        consumer = None if current is None else module_of(model, current)
        if current is not None and consumer is not None and is_depthwise(consumer):
            chains.append(Chain(str(node.target), str(current.target), False))
    return chains


def _input_channels(consumer: Weighted) -> int:
    if isinstance(consumer, nn.Conv2d):
        return consumer.in_channels
    return consumer.in_features


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
        graph = trace(model)
        chains = list(layer_chains(model, graph)) + depthwise_chains(model, graph)
        for _ in range(iterations):
            for chain in chains:
                producer = model.get_submodule(chain.producer)
                consumer = model.get_submodule(chain.consumer)
                assert isinstance(producer, Weighted) and isinstance(consumer, Weighted)
                if _input_channels(consumer) % producer.weight.shape[0]:
                    continue  # a reshape other than flatten: not a per-channel mapping
                equalize_pair(producer, consumer)
    return chains

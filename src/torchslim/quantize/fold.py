"""BatchNorm folding: conv(x) followed by BN in eval mode is one conv with rescaled weights and a
bias (Jacob et al., arXiv:1712.05877, section 3.2), so quantization sees the weights that run."""

from __future__ import annotations

import torch
from torch import nn

from torchslim._compress import untouched_on_failure
from torchslim.quantize._graph import module_of, single_user, trace
from torchslim.quantize.apply import set_submodule
from torchslim.quantize.modules import QuantConv2d


def fold_into_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Rewrite ``conv``'s weight and bias so that conv alone computes bn(conv(x))."""
    assert bn.running_mean is not None and bn.running_var is not None
    with torch.no_grad():
        inv_std = torch.rsqrt(bn.running_var.float() + bn.eps)  # (C,)
        gamma = bn.weight if bn.affine else torch.ones_like(inv_std)  # (C,)
        beta = bn.bias if bn.affine else torch.zeros_like(inv_std)  # (C,)
        factor = gamma * inv_std  # (C,)
        conv.weight.mul_(factor.view(-1, 1, 1, 1))  # (C_out, C_in / g, kH, kW)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(factor)  # (C,)
        new_bias = (bias - bn.running_mean) * factor + beta  # (C,)
        if conv.bias is None:
            conv.bias = nn.Parameter(new_bias.detach().clone())
        else:
            conv.bias.copy_(new_bias)
    if isinstance(conv, QuantConv2d):
        conv.weight_quantizer.reset_range(conv.weight.detach())


def fold_batchnorm_(model: nn.Module) -> list[tuple[str, str]]:
    """Fold every BatchNorm2d that directly and only follows a Conv2d into it, in place.

    The BatchNorm becomes ``nn.Identity``; works before or after ``quantize_`` (a quantized
    conv's weight scales are recomputed). The model should be in eval mode (running statistics).

    Returns:
        The (conv, batchnorm) name pairs folded.

    Raises:
        TorchslimError: the model cannot be traced by torch.fx (the model is left untouched).
    """
    with untouched_on_failure(model):
        graph = trace(model)
        pairs = []
        for node in graph.nodes:
            conv = module_of(model, node)
            user = single_user(node)
            if not isinstance(conv, nn.Conv2d) or user is None:
                continue
            bn = module_of(model, user)
            if isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                fold_into_conv(conv, bn)
                pairs.append((str(node.target), str(user.target)))
        for _, bn_name in pairs:
            set_submodule(model, bn_name, nn.Identity())
    return pairs

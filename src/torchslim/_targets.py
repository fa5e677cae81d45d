"""Which modules a config touches: exact names or "re:<regex>" patterns (pruning, low-rank,
weight sharing), and the weighted layers a technique may change."""

from __future__ import annotations

import re

from torch import nn

WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _is_conv1d(module: nn.Module) -> bool:
    """Hugging Face's GPT-2 ``Conv1D``: a Linear whose weight is stored (in, out)."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def matches(name: str, patterns: tuple[str, ...]) -> bool:
    """True when ``name`` equals a pattern or fully matches a ``"re:<regex>"`` pattern."""
    for pattern in patterns:
        if pattern.startswith("re:"):
            if re.fullmatch(pattern[3:], name):
                return True
        elif pattern == name:
            return True
    return False


def weighted_modules(model: nn.Module, ignore: tuple[str, ...]) -> dict[str, nn.Module]:
    """Linear/Conv (and HF Conv1D) modules by name, minus the ignored ones and tied weights.

    A weight shared with another module (an LM head tied to the token embeddings) is left
    dense: masking it in one place would untie it and add a second copy of the matrix.
    """
    users: dict[int, int] = {}
    for _, module in model.named_modules(remove_duplicate=False):
        weight = getattr(module, "weight", None)
        if isinstance(weight, nn.Parameter):
            users[id(weight)] = users.get(id(weight), 0) + 1
    return {
        name: module
        for name, module in model.named_modules()
        if (isinstance(module, WEIGHTED) or _is_conv1d(module))
        and not matches(name, ignore)
        and users.get(id(module.weight), 1) == 1
    }

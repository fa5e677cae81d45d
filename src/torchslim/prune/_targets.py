"""Which modules a pruning config touches: exact names or "re:<regex>" patterns."""

from __future__ import annotations

import re

from torch import nn

WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


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
    """Linear/Conv modules of ``model`` by name, minus the ignored ones."""
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, WEIGHTED) and not matches(name, ignore)
    }

"""The search's per-layer sensitivity scan: each prunable layer group pruned alone, by half of
its units, and the entry's own metric measured (Li et al., arXiv:1608.08710, section 3.4).

It runs once, before the first trial, when it fits in a tenth of the budget (its cost is one
evaluation per group, estimated from the baseline's); otherwise it is skipped and the state says
why. The report draws it, and ``fragile_layer`` discards unmeasured a candidate that, with no
recovery, removes at least the scanned share of a group whose scan alone already cost more than
twice the budget (the prune step ranks channels globally, so each group of a candidate loses its
own share: the candidate's plan is built, not applied, to read it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from torchslim.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from torchslim.search.config import SearchConfig
    from torchslim.search.metric import Metric
    from torchslim.zoo._entry import ZooEntry

SCAN_RATIO = 0.5  # share of each group's units removed in the scan
SCAN_SHARE = 0.1  # of the search's budget the scan may take


class PlanShares:
    """Per (method, target) of a prune stage: the share of each group's units its plan removes
    from ``model``, ``entry``'s original (built once per pair; {} when the target is out of
    reach)."""

    def __init__(self, entry: ZooEntry, model: nn.Module) -> None:
        self.entry, self.model = entry, model  # the original: plans are built, never applied
        self._shares: dict[tuple[str, str], dict[str, float]] = {}

    def __call__(self, method: str, target: str) -> dict[str, float]:
        from torchslim.prune.apply import config_from_words
        from torchslim.prune.config import StructuredPruneConfig
        from torchslim.prune.graph import PruneError
        from torchslim.prune.sensitivity import removed_shares

        if (method, target) not in self._shares:
            inputs = tuple(self.entry.example_inputs(1))
            config = config_from_words(method, target)
            try:
                shares = (
                    removed_shares(self.model, inputs, config)
                    if isinstance(config, StructuredPruneConfig)
                    else {}
                )
            except (PruneError, ConfigError):
                shares = {}  # the trial will say why it cannot prune
            self._shares[(method, target)] = shares
        return self._shares[(method, target)]


def fragile_layer(
    recipe: dict[str, Any],
    scan: dict[str, Any],
    shares_of: Callable[[str, str], dict[str, float]],
    max_drop: float,
) -> str:
    """Why a candidate need not be measured ('' when it must be): with no recovery and no layer
    dropped, its pruning removes at least the scanned share of a group whose scan alone dropped
    more than twice ``max_drop`` (pruning more of it, and other groups besides, is no better)."""
    if scan.get("state") != "scanned":
        return ""
    steps = [stage["step"] for stage in recipe["stages"]]
    if "prune" not in steps or {"finetune", "distill", "drop_layers"} & set(steps):
        return ""
    fragile = [layer for layer in scan["layers"] if layer["drop"] > 2 * max_drop]
    if not fragile:
        return ""
    prune = next(stage for stage in recipe["stages"] if stage["step"] == "prune")
    if prune.get("depth", "off") != "off":  # blocks dropped too: the width shares do not apply
        return ""
    shares = shares_of(prune["method"], prune["target"])
    for layer in fragile:
        share = shares.get(layer["name"], 0.0)
        if share >= scan["ratio"]:
            return (
                f"it removes {share:.0%} of the units of {layer['name']} with no recovery; the "
                f"sensitivity scan measured a drop of {layer['drop']:.3g} (budget {max_drop:g}) "
                f"removing {scan['ratio']:.0%} of them alone"
            )
    return ""


def skipped(reason: str) -> dict[str, Any]:
    return {"state": "skipped", "reason": reason, "layers": []}


def scan_layers(
    entry: ZooEntry,
    model: nn.Module,
    metric: Metric,
    baseline: dict[str, Any],
    config: SearchConfig,
    threads: int,
) -> dict[str, Any]:
    """Each prunable group's metric drop when pruned alone by ``SCAN_RATIO``, or why not."""
    from torchslim.evaluate.latency import fixed_threads
    from torchslim.prune.graph import PruneError
    from torchslim.prune.sensitivity import group_names, scan_sensitivity

    inputs = tuple(entry.example_inputs(1))
    try:
        names = group_names(model, inputs)
    except (PruneError, ConfigError) as error:
        return skipped(f"nothing to scan: {error}")
    if not names:
        return skipped("nothing to scan: this model has no prunable layer group")
    each = baseline.get("evaluate_seconds")
    if each is None:
        return skipped("the original's evaluation was not timed (a search started before scans)")
    estimate, allowance = each * (len(names) + 1), SCAN_SHARE * config.budget_seconds
    if estimate > allowance:
        return skipped(
            f"the scan would take about {estimate:.0f} s ({len(names)} layer groups, "
            f"{each:.1f} s per evaluation): more than {SCAN_SHARE:.0%} of the "
            f"{config.budget_seconds:.0f} s budget"
        )
    start = time.perf_counter()
    with fixed_threads(threads):
        scan = scan_sensitivity(
            model, inputs, lambda m: float(entry.evaluate(m)[metric.name]), (SCAN_RATIO,)
        )
    layers = [
        {
            "name": name,
            "drop": round(metric.drop(scan.baseline_metric, rows[0]["metric"]), 6),
            "macs_removed": round(1.0 - rows[0]["macs"] / max(scan.macs, 1), 6),
        }
        for name, rows in scan.groups.items()
    ]
    return {
        "state": "scanned",
        "ratio": SCAN_RATIO,
        "importance": "l2",
        "layers": sorted(layers, key=lambda layer: -layer["drop"]),
        "seconds": round(time.perf_counter() - start, 2),
    }

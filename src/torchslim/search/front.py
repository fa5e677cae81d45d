"""What the trials add up to: each trial's record, the Pareto front, the chosen model.

The front is over measured figures (metric drop, median latency, bytes on disk), all three
minimised; the chosen model is the one within the accuracy budget that is best on the
objective (ties: the better metric). A trial is discarded unmeasured when an earlier trial that
took the same path with a larger share of the MACs already dropped twice the budget
(accuracy only falls as more is pruned: the measured sensitivity of that path).
"""

from __future__ import annotations

from typing import Any

OBJECTIVE_KEY = {"latency": "latency_ms", "size": "size_bytes"}
_MEASURED = ("drop", "latency_ms", "size_bytes")


def complete(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r["state"] == "complete"]


def pareto_front(records: list[dict[str, Any]]) -> list[int]:
    """Numbers of the measured trials no other trial beats on drop, latency and size at once."""
    done = complete(records)
    front = []
    for record in done:
        if not any(_dominates(other, record) for other in done if other is not record):
            front.append(record["number"])
    return sorted(front)


def _dominates(a: dict[str, Any], b: dict[str, Any]) -> bool:
    no_worse = all(a[key] <= b[key] for key in _MEASURED)
    return no_worse and any(a[key] < b[key] for key in _MEASURED)


def chosen(records: list[dict[str, Any]], objective: str) -> dict[str, Any] | None:
    """The feasible trial best on ``objective`` (ties: smaller drop), None when none is."""
    feasible = [r for r in complete(records) if r["feasible"]]
    key = OBJECTIVE_KEY[objective]
    return min(feasible, key=lambda r: (r[key], r["drop"], r["number"]), default=None)


def hopeless(choices: dict[str, Any], records: list[dict[str, Any]], max_drop: float) -> str:
    """Why a candidate need not be measured ('' when it must be): a trial on the same path
    (depth, low-rank share, recovery, format, pruning method) keeping at least as many MACs
    dropped more than twice the budget."""
    path = ("depth", "lowrank", "recovery", "format", "size_budget")
    for record in complete(records):
        earlier = record["choices"]
        same_path = all(earlier.get(k) == choices.get(k) for k in path)
        method = earlier.get("prune_method") in (None, choices.get("prune_method"))
        wider = earlier["keep_macs"] >= choices["keep_macs"]
        if same_path and method and wider and record["drop"] > 2 * max_drop:
            return (
                f"trial {record['number']} on the same path keeping {earlier['keep_macs']:.0%} "
                f"of the MACs already dropped {record['drop']:.3g} (budget {max_drop:g})"
            )
    return ""


def measured_record(
    number: int, choices: dict[str, Any], figures: dict[str, Any], context: dict[str, Any]
) -> dict[str, Any]:
    """A trial's record from its figures; ``context`` holds the metric, baseline and budget."""
    metric, baseline = context["metric"], context["baseline"]
    base = {
        "number": number,
        "choices": choices,
        "description": context["description"],
        "recipe": context["recipe"],
        "seconds": figures.get("seconds"),
    }
    if "error" in figures:
        return {**base, "state": "failed", "error": figures["error"]}
    if "discarded" in figures:  # the worker's latency model: hopeless before it was measured
        return {**base, "state": "discarded", "reason": figures["discarded"]}
    drop = metric.drop(baseline["metric"], figures["metric"])
    return {
        **base,
        **{
            k: figures[k]
            for k in (
                "metric",
                "metrics",
                "latency_ms",
                "latency_p90_ms",
                "size_bytes",
                "macs",
                "params",
                "stages",
            )
        },
        "state": "complete",
        "drop": round(drop, 6),
        "feasible": drop <= context["max_drop"],
        "score": metric.score(figures["metric"]),
        "latency_ratio": figures["latency_ms"] / baseline["latency_ms"],
        "size_ratio": figures["size_bytes"] / baseline["size_bytes"],
    }

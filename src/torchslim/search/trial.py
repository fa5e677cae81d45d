"""One trial: build the candidate's recipe on a fresh copy of the model, measure it, write it.

Runs in the search's process or in a Ray worker, so everything it needs travels in a
``TrialSpec`` (plain values and the baseline's report) and it returns plain values. A trial
whose recipe does not fit the model returns its error instead of figures. Beside its artifact
a trial writes ``roofline.json``: each op of its float module on this machine's roofline.

With a latency limit, the model's structure is built first (the stages before the first
recovery) and the latency model predicts it: a candidate predicted slower than the limit is
discarded before its recovery is trained or its latency measured.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torchslim._io import write_json
from torchslim.errors import TorchslimError


@dataclass(frozen=True)
class TrialSpec:
    """Everything a worker needs: the trial's number and recipe, how to rebuild the model
    (``source``, as in a manifest), where to write, how to measure, and the baseline report."""

    number: int
    recipe: Any  # a Recipe (possibly of no stage: the original model, measured as a trial)
    source: dict[str, Any]
    out: str
    threads: int
    repeats: int
    seed: int
    metric: str
    baseline: Any  # EvaluationReport of the original model (one measurement for every trial)
    device: str = "cpu"
    latency_limit: float | None = None  # discard above this predicted share of the original's


RECOVERY_STEPS = frozenset({"finetune", "distill", "qat"})


def run_trial(spec: TrialSpec) -> dict[str, Any]:
    """Build, measure and write trial ``spec.number``; its figures (or its error)."""
    import torch

    torch.set_num_threads(spec.threads)
    start = time.perf_counter()
    try:
        figures = _build_and_measure(spec)
    except (TorchslimError, RuntimeError, ValueError) as error:  # a recipe that does not fit
        figures = {"error": f"{type(error).__name__}: {error}"}
    figures.update(number=spec.number, seconds=round(time.perf_counter() - start, 2))
    return figures


def _build_and_measure(spec: TrialSpec) -> dict[str, Any]:
    from torchslim._compress import CompressionOutcome
    from torchslim.evaluate import evaluate
    from torchslim.pipeline.artifact import base_entry
    from torchslim.pipeline.recipe import Recipe
    from torchslim.pipeline.registry import StepContext, get_step
    from torchslim.pipeline.runner import RunOptions, run_stages, write_result
    from torchslim.profile import profile
    from torchslim.search.roofline import ROOFLINE_FILE, measured_roofline

    entry = base_entry({"model": spec.source})
    recipe = spec.recipe
    original = entry.load()
    context = StepContext(entry, original, spec.device, spec.seed, spec.threads)
    options = RunOptions(spec.device, spec.threads, measure_stages=False, seed=spec.seed)
    stages = recipe.stages
    final = stages[-1:] if stages and get_step(stages[-1].step).final else ()
    body = stages[: len(stages) - len(final)]
    first_recovery = next((i for i, s in enumerate(body) if s.step in RECOVERY_STEPS), len(body))
    inputs = tuple(entry.example_inputs(1))
    model, records = run_stages(copy.deepcopy(original), Recipe(body[:first_recovery]), context,
                                options)  # fmt: skip
    if spec.latency_limit is not None:
        reason = _predicted_too_slow(original, model, inputs, spec.latency_limit, spec)
        if reason:
            return {"discarded": reason}
    model, more = run_stages(model, Recipe(body[first_recovery:]), context, options)
    records += [{**record, "index": len(records) + i} for i, record in enumerate(more)]
    counts = profile(model, inputs, measure_memory=False)
    macs, params = int(counts.total.macs), sum(p.numel() for p in model.parameters())
    note = f"its float module before {final[0].step}" if final else ""
    roofline = measured_roofline(model, inputs, spec.threads, counts, note)
    if final:
        model, last = run_stages(model, Recipe(final, "", "search"), context, options)
        records += [{**record, "index": len(records) + i} for i, record in enumerate(last)]
    after = evaluate(
        model, entry, batch_size=1, threads=spec.threads, repeats=spec.repeats, device=spec.device
    )
    details = {"recipe": recipe.to_dict(), "stages": records}
    outcome = CompressionOutcome(
        entry.name, f"search trial {spec.number}", spec.baseline, after, Path(spec.out), details
    )
    outcome = write_result(Path(spec.out), entry, model, recipe, outcome)
    write_json(Path(spec.out) / ROOFLINE_FILE, roofline)
    figures = {
        "metric": float(outcome.after.metrics[spec.metric]),
        "metrics": outcome.after.metrics,
        "latency_ms": outcome.after.latency.median,
        "latency_p90_ms": outcome.after.latency.p90,
        "size_bytes": outcome.after.size_bytes,
        "macs": macs,
        "params": params,
        "stages": [{"step": r["step"], "seconds": r["seconds"]} for r in records],
    }
    return figures


def _predicted_too_slow(original: Any, model: Any, inputs: tuple[Any, ...], limit: float,
                        spec: TrialSpec) -> str:  # fmt: skip
    """Why the candidate's structure cannot meet the latency ``limit`` ('' when it may): its
    float model predicted by this machine's latency model, as a share of the original's (a
    ratio of two predictions: the model's bias on this architecture cancels)."""
    from torchslim.profile import profile
    from torchslim.profile.latency_cache import calibrated_model

    latency = calibrated_model(spec.threads, spec.device)
    ratio = latency.predict_report(profile(model, inputs, measure_memory=False)) / (
        latency.predict_report(profile(original, inputs, measure_memory=False))
    )
    if ratio <= limit:
        return ""
    return (
        f"the latency model predicts its structure at {ratio:.2f} of the original's latency, "
        f"over the limit {limit:.2f}: discarded before recovery and measurement"
    )

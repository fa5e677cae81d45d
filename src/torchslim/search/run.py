"""``search``: recipes sampled, built and measured until the budget is spent or the goal is met.

After every trial ``search.json`` (every record, the front, the chosen trial) and ``best/`` (the
chosen trial's artifact) are rewritten, so a search that ends any way (budget, goal, Ctrl-C, a
kill) leaves the best model found so far; ``report.html`` is written at the end and by
``torchslim report DIR``.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from torchslim._io import atomic_directory, write_json
from torchslim._machine import usable_cpus
from torchslim._progress import stage as progress
from torchslim.search import front, study
from torchslim.search.config import SearchConfig
from torchslim.search.metric import Metric, metric_of
from torchslim.search.sensitivity import PlanShares, fragile_layer, scan_layers
from torchslim.search.space import Space, describe, recipe_for, space_for
from torchslim.search.trial import TrialSpec
from torchslim.search.workers import workers_for
from torchslim.zoo._entry import ZooEntry

# The latency model's error across the zoo is within about 1.5x (benchmarks/profile_latency):
# a candidate predicted over 1.5x the target is not measured.
LATENCY_SLACK = 1.5

STATE_FILE = "search.json"


@dataclass
class SearchState:
    """What the search knows; ``to_dict`` is ``search.json``."""

    config: SearchConfig
    model: dict[str, Any]
    space: Space
    metric: Metric
    baseline: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)
    stopped: str = "running"
    workers: str = "in process"
    threads: int = 1
    sensitivity: dict[str, Any] = field(default_factory=dict)
    plan_shares: Any = field(default=None, repr=False)  # PlanShares of the entry (not stored)

    def best(self) -> dict[str, Any] | None:
        return front.chosen(self.records, self.config.objective)

    def goal_met(self) -> bool:
        best = self.best()
        target = self.config.target_ratio
        key = f"{self.config.objective}_ratio"
        return target is not None and best is not None and best[key] <= target

    def to_dict(self) -> dict[str, Any]:
        from torchslim._machine import machine_facts

        best = self.best()
        return {
            "kind": "torchslim-search",
            "model": self.model,
            "config": self.config.to_dict(),
            "space": self.space.to_dict(),
            "metric": {
                "name": self.metric.name,
                "points": self.metric.points,
                "higher_is_better": self.metric.higher_is_better,
            },
            "baseline": self.baseline,
            "sensitivity": self.sensitivity,
            "trials": sorted(self.records, key=lambda r: r["number"]),
            "front": front.pareto_front(self.records),
            "best": None if best is None else best["number"],
            "goal_met": self.goal_met(),
            "stopped": self.stopped,
            "workers": self.workers,
            "threads_per_trial": self.threads,
            "machine": machine_facts(),
        }


def search(
    entry: ZooEntry,
    config: SearchConfig,
    out: str | Path,
    resume: bool = False,
    device: str = "cpu",
) -> SearchState:
    """Search ``entry``'s model for the best recipe under ``config``; write ``out``.

    Raises:
        ConfigError: a bad setting, or ``resume`` of a search started with other settings.
    """
    from torchslim.pipeline.artifact import model_source

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stored = _load_state(out) if resume else None
    original = entry.load()
    space = space_for(entry, original, config)
    handle = study.open_study(out, config, resume, space)
    metric = metric_of(list(entry.metric_names()) or list(entry.evaluate(original)))
    threads = config.threads or max(1, usable_cpus() // config.workers)
    baseline = (
        stored["baseline"] if stored else _measure_baseline(entry, original, metric, config, device)
    )
    state = SearchState(
        config,
        model_source(entry),
        space,
        metric,
        baseline,
        list(stored["trials"]) if stored else [],
        threads=threads,
    )
    state.sensitivity = (stored or {}).get("sensitivity") or _scan(entry, original, state)
    state.plan_shares = PlanShares(entry, original)
    pool = workers_for(config.workers, config.ray_address)
    state.workers = pool.name
    deadline = time.monotonic() + config.budget_seconds
    try:
        pending = study.unfinished(handle)  # a killed search finishes its generation first
        while True:
            if not pending:
                state.stopped = _stop_reason(state, handle, deadline)
                if state.stopped != "running":
                    break
                count = min(config.generation, config.max_trials - len(handle.trials))
                asked = [study.ask(handle, config, space) for _ in range(count)]
                pending = [(trial.number, choices) for trial, choices in asked]
            _run_generation(state, handle, pool, pending, (out, entry, device, deadline))
            pending = []
    except KeyboardInterrupt:
        state.stopped = "interrupted"
    finally:
        pool.close()
        _write_state(out, state)
        _write_report(out)
    return state


def _scan(entry: ZooEntry, original: Any, state: SearchState) -> dict[str, Any]:
    with progress("per-layer sensitivity scan"):
        return scan_layers(
            entry, original, state.metric, state.baseline, state.config, state.threads
        )


def _stop_reason(state: SearchState, handle: Any, deadline: float) -> str:
    if state.goal_met():
        return "goal met"
    if len(handle.trials) >= state.config.max_trials:
        return "trials"
    return "budget" if time.monotonic() >= deadline else "running"


def _run_generation(
    state: SearchState,
    handle: Any,
    pool: Any,
    pending: list[tuple[int, dict[str, Any]]],
    where: tuple[Path, ZooEntry, str, float],
) -> None:
    """Run the generation's trials (those not yet recorded), then tell them in number order."""
    out, _, device, deadline = where
    known = {r["number"] for r in state.records}
    first = min(number for number, _ in pending)
    told = [r for r in state.records if r["number"] < first]  # what the sampler knew too
    specs, contexts = [], {}
    for number, choices in pending:
        if number in known:
            continue  # recorded before a kill, never told: told below
        recipe = recipe_for(choices, state.space)
        context = {
            "metric": state.metric,
            "baseline": state.baseline,
            "recipe": recipe.to_dict(),
            "description": describe(choices),
            "max_drop": state.config.max_drop,
        }
        contexts[number] = (choices, context)
        reason = front.hopeless(choices, told, state.config.max_drop) or fragile_layer(
            recipe.to_dict(), state.sensitivity, state.plan_shares, state.config.max_drop
        )
        if reason:
            _add(
                out,
                state,
                {
                    "number": number,
                    "choices": choices,
                    "state": "discarded",
                    "reason": reason,
                    "description": context["description"],
                    "recipe": context["recipe"],
                },
            )
            continue
        trial_out = out / "trials" / f"{number:04d}"
        specs.append(
            TrialSpec(
                number,
                recipe,
                state.model,
                str(trial_out),
                state.threads,
                state.config.repeats,
                state.config.seed,
                state.metric.name,
                state.baseline["report"],
                device,
                _latency_limit(state.config, choices),
            )
        )
    for figures in pool.run(specs, lambda: time.monotonic() >= deadline):
        choices, context = contexts[figures["number"]]
        with progress(f"trial {figures['number']}: {context['description']}"):
            _add(out, state, front.measured_record(figures["number"], choices, figures, context))
    recorded = {r["number"]: r for r in state.records}
    for number, _ in sorted(pending):
        if number in recorded:
            study.tell(handle, number, recorded[number], state.config.max_drop)


def _latency_limit(config: SearchConfig, choices: dict[str, Any]) -> float | None:
    """The predicted latency share above which a candidate is hopeless: with a latency target,
    for a float candidate (what the latency model predicts; an INT8 runtime's speed-up is not
    in it), the target widened by the model's error (``LATENCY_SLACK``)."""
    if config.objective != "latency" or config.target_ratio is None:
        return None
    return config.target_ratio * LATENCY_SLACK if choices["format"] == "fp32" else None


def _add(out: Path, state: SearchState, record: dict[str, Any]) -> None:
    """Record one trial and rewrite the search's state and ``best/`` at once."""
    state.records.append(record)
    _write_state(out, state)


def _write_state(out: Path, state: SearchState) -> None:
    payload = state.to_dict()
    payload["baseline"] = {k: v for k, v in state.baseline.items() if k != "report"}
    payload["baseline_report"] = dataclasses.asdict(state.baseline["report"])
    write_json(out / STATE_FILE, payload)
    best = state.best()
    if best is None:
        return
    source = out / "trials" / f"{best['number']:04d}"
    marker = out / "best" / "manifest.json"
    if marker.is_file() and _trial_of(marker) == best["number"]:
        return
    with atomic_directory(out / "best") as tmp:
        for item in source.iterdir():
            if item.is_file() and not item.name.startswith("."):
                shutil.copy2(item, tmp / item.name)
        (tmp / "recipe.yaml").write_text(yaml.safe_dump(best["recipe"], sort_keys=False))


def _trial_of(manifest: Path) -> int | None:
    import json

    technique = json.loads(manifest.read_text()).get("technique", "")
    return int(technique.rsplit(" ", 1)[-1]) if technique.startswith("search trial") else None


def _load_state(out: Path) -> dict[str, Any] | None:
    import json

    from torchslim.evaluate.latency import LatencyStats
    from torchslim.evaluate.report import EvaluationReport

    file = out / STATE_FILE
    if not file.is_file():
        return None
    saved = json.loads(file.read_text())
    report = dict(saved["baseline_report"])
    report["latency"] = LatencyStats(**report["latency"])
    saved["baseline"]["report"] = EvaluationReport(**report)
    return saved


def _measure_baseline(
    entry: ZooEntry, original: Any, metric: Metric, config: SearchConfig, device: str
) -> dict[str, Any]:
    from torch import nn

    from torchslim.evaluate import evaluate
    from torchslim.profile import profile
    from torchslim.search.roofline import measured_roofline

    threads = config.threads or max(1, usable_cpus() // config.workers)
    with progress("measuring the original"):
        start = time.perf_counter()
        report = evaluate(original, entry, 1, threads, device, config.repeats)
        seconds = time.perf_counter() - start
    inputs = tuple(entry.example_inputs(1))
    counts = profile(original, inputs, measure_memory=False)
    with progress("the original on this machine's roofline"):
        roofline = measured_roofline(original, inputs, threads, counts)
    shapes = {
        name: list(module.weight.shape)
        for name, module in original.named_modules()
        if isinstance(module, nn.Conv2d | nn.Linear)
    }
    return {
        "layer_shapes": shapes,
        "metric": float(report.metrics[metric.name]),
        "metrics": report.metrics,
        "latency_ms": report.latency.median,
        "size_bytes": report.size_bytes,
        "macs": int(counts.total.macs),
        "params": report.params,
        "evaluate_seconds": round(seconds, 3),  # metric and latency: what a scan step costs
        "roofline": roofline,
        "report": report,
    }


def _write_report(out: Path) -> None:
    from torchslim.search.report import write_report

    if (out / STATE_FILE).is_file():
        write_report(out)

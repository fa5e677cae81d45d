"""The search against the built-in CNN recipe, in one run: accuracy drop, measured speed-up.

    python benchmarks/search_cnn.py --budget 25m                  # fashion-resnet20
    python benchmarks/search_cnn.py --budget 25m --recipe-samples 2000

The built-in recipe (cnn-prune-distill-int8: half the MACs, one distillation epoch, INT8 on the
fastest runtime) and the search (``torchslim compress --max-drop``) both run here; then fp32
eager, the recipe's model and the search's chosen model are timed interleaved on the same
inputs and threads (warm-up, medians). ``--recipe-samples N`` limits the recipe's distillation
to N training images (said so in the JSON): on a shared machine one full epoch may not fit.
Writes benchmarks/results/search_cnn.json (or --name); keeps the search in --keep.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Console

import torchslim
from torchslim import zoo
from torchslim._machine import machine_facts
from torchslim.benchmark import BenchmarkConfig, compare, write_result_json
from torchslim.pipeline import load_recipe
from torchslim.pipeline.recipe import Recipe
from torchslim.pipeline.runner import RunOptions, compress
from torchslim.search import SearchConfig, parse_budget, search

RESULTS = Path(__file__).parent / "results"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fashion-resnet20")
    parser.add_argument("--recipe", default="cnn-prune-distill-int8")
    parser.add_argument("--recipe-samples", type=int, default=None)
    parser.add_argument("--max-drop", type=float, default=1.0)
    parser.add_argument("--budget", default="30m")
    parser.add_argument("--recovery-samples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--keep", type=Path, default=None, help="keep the search's --out here")
    parser.add_argument("--name", default="search_cnn")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    return parser.parse_args()


def limited(recipe: Recipe, samples: int | None) -> Recipe:
    """The recipe with its distillation limited to ``samples`` training images (None: as is)."""
    if samples is None:
        return recipe
    stages = tuple(
        dataclasses.replace(s, options=dataclasses.replace(s.options, samples=samples))
        if s.step == "distill" else s
        for s in recipe.stages
    )  # fmt: skip
    return dataclasses.replace(recipe, stages=stages)


def timing(entry: Any, models: dict[str, Any], rounds: int) -> dict[str, Any]:
    config = BenchmarkConfig(warmup=5, rounds=rounds, max_seconds=30)
    batch = tuple(entry.example_inputs(1))
    variants = {name: (lambda m=m: m(*batch)) for name, m in models.items()}
    result = compare(variants, "fp32_eager", config)
    Console(width=120).print(result.to_table(title=f"{entry.name}, batch 1"))
    return result.to_dict()


def main() -> None:
    args = parse_args()
    entry = zoo.get(args.model)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="search-cnn-") as scratch:
        work = Path(scratch)
        recipe = limited(load_recipe(args.recipe), args.recipe_samples)
        clock = time.perf_counter()
        outcome = compress(entry, recipe, work / "recipe", RunOptions(measure_stages=False))
        recipe_seconds = time.perf_counter() - clock
        config = SearchConfig(max_drop=args.max_drop, budget_seconds=parse_budget(args.budget),
                              recovery_samples=args.recovery_samples, seed=args.seed)  # fmt: skip
        out = args.keep or work / "search"
        clock = time.perf_counter()
        state = search(entry, config, out)
        search_seconds = time.perf_counter() - clock
        best = state.best()
        models = {"fp32_eager": entry.load(), "recipe": torchslim.load(work / "recipe")}
        if best is not None:
            models["search_best"] = torchslim.load(out / "best")
        latency = timing(entry, models, args.rounds)
    medians = {name: row["median_ms"] for name, row in latency["variants"].items()}
    metric = state.to_dict()["metric"]["name"]  # accuracy; WordSim-353 Spearman for MiniLM
    base_metric = outcome.before.metrics[metric]
    after_metric = outcome.after.metrics[metric]
    front = [t for t in state.records if t["number"] in set(state.to_dict()["front"])]
    payload: dict[str, Any] = {
        "benchmark": "search_cnn",
        "model": args.model,
        "date": started,
        "machine": machine_facts(),
        "machine_note": "shared 2-core machine, other engineers' jobs running: load average "
        f"{load_before[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end",
        "recipe": {"name": args.recipe,
                   "distill_samples": args.recipe_samples or "all (as built in)",
                   "seconds": round(recipe_seconds), "metric": metric, metric: after_metric,
                   "drop": base_metric - after_metric},
        "search": {"config": config.to_dict(), "seconds": round(search_seconds),
                   "trials": len(state.records), "stopped": state.stopped,
                   "front_size": len(front),
                   "front_within_budget": sum(t["feasible"] for t in front),
                   "best": best, "out": str(out) if args.keep else None},
        "original_metric": base_metric,
        "latency_batch1": latency,
        "speedup_search_vs_recipe": (medians["recipe"] / medians["search_best"])
        if best is not None else None,
    }  # fmt: skip
    path = write_result_json(args.name, payload, args.out_dir)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

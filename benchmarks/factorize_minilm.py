"""MiniLM with 30 % fewer parameters by low-rank factorization of its encoder's Linear layers:
plain truncated SVD vs data-aware whitened SVD (SVD-LLM, arXiv 2403.07378), each before and
after distillation from the original, and the measured latency at batch 1 and 32 (the original
timed in the same run, same inputs). Ranks: one energy level for all layers (``target=params``)
so that the whole model loses 30 % of its parameters; every layer is factorized
(``check_speed: false``) so both methods meet the same budget; the timing says what that costs.

    OMP_NUM_THREADS=1 python benchmarks/factorize_minilm.py --samples 4000

Writes benchmarks/results/factorize_minilm.json.
"""

from __future__ import annotations

import argparse
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

import torchslim
import torchslim.zoo
from torchslim._machine import machine_facts
from torchslim.benchmark import write_result_json
from torchslim.evaluate.latency import measure_latency
from torchslim.pipeline import parse_recipe
from torchslim.pipeline.runner import RunOptions, compress

RESULTS = Path(__file__).parent / "results"
METRIC = "wordsim353_spearman"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--removed", type=float, default=0.30, help="of all parameters")
    parser.add_argument("--samples", type=int, default=4000, help="distillation texts")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    return parser.parse_args()


def linear_share(model: nn.Module, removed: float) -> float:
    """The fraction of the Linear weights to remove so the model loses ``removed`` of all."""
    total = sum(p.numel() for p in model.parameters())
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    return round(removed * total / linear, 4)


def recipe(method: str, share: float, args: argparse.Namespace) -> str:
    return (
        "version: 1\nstages:\n"
        f"  - step: factorize\n    method: {method}\n    target: params={share}\n"
        "    check_speed: false\n    calibration_batches: 8\n"
        f"  - step: distill\n    epochs: 1\n    lr: {args.lr}\n    batch_size: 64\n"
        f"    samples: {args.samples}\n"
    )


def latency(entry: Any, model: nn.Module, threads: int) -> dict[str, float]:
    medians = {}
    for batch in (1, 32):
        inputs = tuple(entry.example_inputs(batch))
        stats = measure_latency(lambda batch=inputs: model(*batch), 3, 15, threads)
        medians[f"batch_{batch}_median_ms"] = round(stats.median, 3)
    return medians


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    entry = torchslim.zoo.get("minilm")
    original = entry.load()
    share = linear_share(original, args.removed)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in ("svd", "whitened"):
            out = Path(tmp) / method
            options = RunOptions(repeats=5, threads=args.threads, measure_stages=True)
            outcome = compress(entry, parse_recipe(recipe(method, share, args)), out, options)
            stages = outcome.details["stages"]
            model = torchslim.load(out)
            results[method] = {
                "params": sum(p.numel() for p in model.parameters()),
                "after_factorize": stages[0]["figures"]["metrics"],
                "after_distill": stages[1]["figures"]["metrics"],
                "latency": latency(entry, model, args.threads),
                "layers": stages[0]["summary"]["layers"],
            }
    report(args, entry, original, share, results)


def report(args: argparse.Namespace, entry: Any, original: nn.Module, share: float,
           results: dict[str, Any]) -> None:  # fmt: skip
    base = entry.evaluate(original)
    drops = {
        method: {
            stage: round(base[METRIC] - results[method][stage][METRIC], 4)
            for stage in ("after_factorize", "after_distill")
        }
        for method in results
    }
    payload = {
        "benchmark": "factorize_minilm",
        "timestamp_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": vars(args) | {"out_dir": str(args.out_dir), "linear_weights_removed": share},
        "original": {
            "params": sum(p.numel() for p in original.parameters()),
            "metrics": base,
            "latency": latency(entry, original, args.threads),
        },
        "methods": results,
        "wordsim353_drop": drops,
        "goal": "whitened drop <= half the svd drop (before and after distillation)",
        "goal_met": {
            stage: drops["whitened"][stage] <= 0.5 * drops["svd"][stage]
            for stage in ("after_factorize", "after_distill")
        },
        "machine": machine_facts(),
        "note": "shared 2-core machine, busy with other jobs: latencies are medians of a loaded "
        "machine, original and factorized timed in the same run",
    }
    path = write_result_json("factorize_minilm", payload, args.out_dir)
    print(f"drops {drops}; wrote {path}")


if __name__ == "__main__":
    main()

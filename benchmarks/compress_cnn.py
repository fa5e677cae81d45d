"""The CNN recipe against INT8 alone, in one run: MACs, accuracy, size and measured speed-up.

    python benchmarks/compress_cnn.py                     # fashion-resnet20, recipes/cnn-...
    python benchmarks/compress_cnn.py --recovery-seeds 0 1 2   # + distill vs finetune, 3 seeds

Both pipelines run here (`torchslim compress` code path); then fp32 eager, the INT8-only model
and the pruned + distilled + INT8 model are timed interleaved on the same inputs and threads
(warm-up, medians). With ``--recovery-seeds``, pruning is followed by a fine-tune or by a
distillation from the original at the same budget (epochs, lr, data), per seed: the mean and
spread of the accuracy difference say whether distillation earns its place in the recipe.
Writes benchmarks/results/compress_cnn.json (or --name).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Console

from torchslim import zoo
from torchslim._machine import machine_facts
from torchslim.benchmark import BenchmarkConfig, compare, write_result_json
from torchslim.pipeline import load_recipe, parse_recipe
from torchslim.pipeline.runner import RunOptions, compress

ROOT = Path(__file__).parents[1]
RESULTS = Path(__file__).parent / "results"
INT8_ONLY = "version: 1\nstages:\n  - step: deploy\n    precision: int8\n"
RECOVERY = """\
version: 1
stages:
  - step: prune
    method: l2
    target: {target}
    depth: {depth}
  - step: {step}
    epochs: {epochs}
"""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fashion-resnet20")
    parser.add_argument("--recipe", type=Path, default=ROOT / "recipes/cnn-prune-distill-int8.yaml")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--recovery-seeds", type=int, nargs="*", default=[])
    parser.add_argument("--recovery-epochs", type=int, default=1)
    parser.add_argument("--skip-pipelines", action="store_true", help="only the recovery runs")
    parser.add_argument(
        "--clock",
        choices=("wall", "thread"),
        default="wall",
        help="thread: CPU time of the calling thread (1 thread; runtimes that run on the caller, "
        "as ONNX Runtime and OpenVINO with 1 thread do): what a shared core's other jobs do not "
        "inflate",
    )
    parser.add_argument(
        "--burst",
        type=int,
        default=1,
        help="also time samples of N consecutive calls (warm caches; 1: single calls only)",
    )
    parser.add_argument("--name", default="compress_cnn")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    return parser.parse_args()


def summary(outcome: Any) -> dict[str, Any]:
    stages = outcome.details["stages"]
    macs = [s["figures"]["macs"] for s in stages if "macs" in s.get("figures", {})]
    return {
        "before": outcome.before.to_dict(),
        "after": outcome.after.to_dict(),
        "macs_after_last_module_stage": macs[-1] if macs else None,
        "stages": [
            {"step": s["step"], "seconds": s["seconds"], "figures": s.get("figures")}
            for s in stages
        ],
    }


def pipelines(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    entry = zoo.get(args.model)
    runs = {"int8_only": parse_recipe(INT8_ONLY), "recipe": load_recipe(args.recipe)}
    outcomes = {
        name: compress(entry, recipe, work / name, RunOptions(repeats=20))
        for name, recipe in runs.items()
    }
    from torchslim.profile import profile

    original = entry.load()
    macs_fp32 = profile(original, tuple(entry.example_inputs(1)), measure_memory=False).total.macs
    result: dict[str, Any] = {"macs_fp32": macs_fp32}
    result.update({name: summary(outcome) for name, outcome in outcomes.items()})
    result["latency"] = timing(entry, original, work, args)
    result["goals"] = goals(result)
    return result


def goals(result: dict[str, Any]) -> dict[str, Any]:
    """The issue's figures: the recipe's speed-up over the INT8-only model's (both vs fp32 eager,
    per batch size), size and MACs ratios vs fp32, accuracy drop (points)."""
    fp32, recipe = result["recipe"]["before"], result["recipe"]["after"]
    int8_only = result["int8_only"]["after"]
    speedups = {
        mode: {
            batch: timed["variants"]["int8_only"]["median_ms"]
            / timed["variants"]["recipe"]["median_ms"]
            for batch, timed in by_batch.items()
            if batch != "calls_per_sample"
        }
        for mode, by_batch in result["latency"].items()
    }
    macs_after = result["recipe"]["macs_after_last_module_stage"]
    return {
        "recipe_speedup_over_int8_only": speedups,
        "smaller_than_fp32": fp32["size_bytes"] / recipe["size_bytes"],
        "int8_only_smaller_than_fp32": fp32["size_bytes"] / int8_only["size_bytes"],
        "fewer_macs": result["macs_fp32"] / macs_after if macs_after else None,
        "accuracy_drop_points": 100 * (fp32["metrics"]["accuracy"] - recipe["metrics"]["accuracy"]),
    }


def timing(entry: Any, original: Any, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """fp32 eager, INT8 only and the recipe's model, interleaved, per batch size."""
    import torchslim

    models = {"fp32_eager": original, "int8_only": torchslim.load(work / "int8_only"),
              "recipe": torchslim.load(work / "recipe")}  # fmt: skip
    thread = args.clock == "thread"
    clock = "thread_cpu" if thread else "wall"
    config = BenchmarkConfig(
        warmup=5, rounds=args.rounds, max_seconds=30, threads=1 if thread else None, clock=clock
    )
    out: dict[str, Any] = {}
    for calls in sorted({1, args.burst}):
        mode = "single_calls" if calls == 1 else f"bursts_of_{calls}"
        out[mode] = {"calls_per_sample": calls}
        for batch_size in args.batch_sizes:
            batch = tuple(entry.example_inputs(batch_size))
            variants = {name: _burst(m, batch, calls) for name, m in models.items()}
            result = compare(variants, "fp32_eager", config)
            title = f"{args.model}, batch {batch_size}, {calls} call(s) per sample"
            Console(width=120).print(result.to_table(title=title))
            out[mode][str(batch_size)] = result.to_dict()
    return out


def _burst(model: Any, batch: tuple[Any, ...], calls: int) -> Any:
    """One timed sample: ``calls`` consecutive calls of ``model`` (1: each call follows another
    model's, its caches cold; more: a model serving requests back to back, mostly warm)."""

    def run() -> None:
        for _ in range(calls):
            model(*batch)

    return run


def recovery(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Prune, then fine-tune or distill at the same budget, per seed."""
    entry = zoo.get(args.model)
    prune = next(s for s in load_recipe(args.recipe).stages if s.step == "prune")
    target, depth = prune.options.target, prune.options.depth  # the recipe's own pruning
    rows: dict[str, list[float]] = {"finetune": [], "distill": []}
    for seed in args.recovery_seeds:
        for step in rows:
            recipe = parse_recipe(
                RECOVERY.format(target=target, depth=depth, step=step, epochs=args.recovery_epochs)
            )
            run = RunOptions(repeats=3, measure_stages=False, seed=seed)
            outcome = compress(entry, recipe, work / f"{step}-{seed}", run)
            rows[step].append(outcome.after.metrics["accuracy"])
            print(f"seed {seed} {step}: accuracy {rows[step][-1]:.4f}", flush=True)
    differences = [d - f for d, f in zip(rows["distill"], rows["finetune"], strict=True)]
    return {
        "seeds": args.recovery_seeds,
        "epochs": args.recovery_epochs,
        "accuracy": rows,
        "distill_minus_finetune": differences,
        "mean_difference": statistics.mean(differences) if differences else None,
        "spread": [min(differences), max(differences)] if differences else None,
    }


def main() -> None:
    args = parse_args()
    payload: dict[str, Any] = {
        "benchmark": "compress_cnn",
        "model": args.model,
        "recipe": str(args.recipe.relative_to(ROOT)) if args.recipe.is_relative_to(ROOT) else "",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_facts(),
        "command": "python " + " ".join(sys.argv),
        "clock": {
            "wall": "time.perf_counter around each call",
            "thread": "time.thread_time around each call, 1 thread: ONNX Runtime "
            "(intra_op_num_threads=1) and OpenVINO (INFERENCE_NUM_THREADS=1) run the graph on "
            "the calling thread (checked: thread time = wall time on a quiet core)",
        }[args.clock],
    }
    with tempfile.TemporaryDirectory(prefix="compress-cnn-") as scratch:
        if not args.skip_pipelines:
            payload["pipelines"] = pipelines(args, Path(scratch))
        if args.recovery_seeds:
            payload["recovery"] = recovery(args, Path(scratch))
    path = write_result_json(args.name, payload, args.out_dir)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

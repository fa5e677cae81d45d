"""ALBERT-style sharing on MiniLM (arXiv 1909.11942): 6 layers -> 3 shared blocks, then
distillation from the original; unique parameters and WordSim-353 before and after distillation
(the built-in recipe minilm-share-layers-distill, with ``--samples`` distillation texts).

    OMP_NUM_THREADS=1 python benchmarks/share_layers_minilm.py --samples 2000

Writes benchmarks/results/share_layers_minilm-<optimizer>[-<init>].json.
"""

from __future__ import annotations

import argparse
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import torch

import torchslim
import torchslim.zoo
from torchslim._machine import machine_facts
from torchslim.benchmark import write_result_json
from torchslim.pipeline import parse_recipe
from torchslim.pipeline.runner import RunOptions, compress
from torchslim.share import unique_params

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=3)
    parser.add_argument("--init", default="first", help="first | mean")
    parser.add_argument("--samples", type=int, default=2000, help="distillation texts")
    parser.add_argument("--optimizer", default="adamw", help="adamw | sgd (the distill step's)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    entry = torchslim.zoo.get("minilm")
    text = (
        "version: 1\nstages:\n"
        f"  - step: share_layers\n    blocks: {args.blocks}\n    init: {args.init}\n"
        "  - step: distill\n    epochs: 1\n    lr: 0.0001\n    batch_size: 64\n"
        f"    samples: {args.samples}\n    optimizer: {args.optimizer}\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        options = RunOptions(repeats=5, threads=args.threads, measure_stages=True)
        outcome = compress(entry, parse_recipe(text), Path(tmp) / "out", options)
        reloaded = torchslim.load(Path(tmp) / "out")
        stored_bytes = (Path(tmp) / "out" / "model.safetensors").stat().st_size
    stages = outcome.details["stages"]
    original = entry.load()
    payload = {
        "benchmark": "share_layers_minilm",
        "timestamp_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": vars(args) | {"out_dir": str(args.out_dir)},
        "original": {
            "unique_params": unique_params(original),
            "metrics": outcome.before.metrics,
            "size_bytes": outcome.before.size_bytes,
        },
        "shared": {
            "unique_params": unique_params(reloaded),
            "artifact_safetensors_bytes": stored_bytes,
            "after_sharing": stages[0]["figures"]["metrics"],
            "after_distill": stages[1]["figures"]["metrics"],
            "reloaded_metrics": entry.evaluate(reloaded),
        },
        "distill": {"seconds": stages[1]["seconds"], "summary": stages[1]["summary"]},
        "machine": machine_facts(),
        "note": "shared 2-core machine, busy with other jobs (1 thread pinned to a core other "
        "processes also ran on); --samples distillation texts, fewer than the corpus holds, to "
        "keep the run under ~25 min",
    }
    name = f"share_layers_minilm-{args.optimizer}" + (
        "" if args.init == "first" else f"-{args.init}"
    )
    path = write_result_json(name, payload, args.out_dir)
    print(f"{payload['original']['unique_params']} -> {payload['shared']['unique_params']} "
          f"unique params; {payload['shared']['after_distill']}; wrote {path}")  # fmt: skip


if __name__ == "__main__":
    main()

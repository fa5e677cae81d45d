"""``torch._int_mm`` int8 Linear layers vs fp32 on this CPU: the kernel alone, the full layer
(quantize + kernel + rescale), and MiniLM end to end.

    nice -n 5 python benchmarks/quantize_int_mm.py            # ~5 min on 2 busy cores
    python benchmarks/quantize_int_mm.py --quick              # fewer rounds (a smoke run)

(1) Matmul microbenchmark at MiniLM's Linear shapes (384->384, 384->1536, 1536->384) for 128 and
4096 tokens (batch 1 and 32 x seq 128): fp32 ``torch.mm`` (baseline) vs ``torch._int_mm`` on
pre-quantized int8 inputs (kernel only), the per-token input quantization alone, the rescale
(int32 -> fp32 x scales + bias) alone, the whole ``Int8Linear`` (all three), and fp32
``nn.Linear`` (mm + bias: what ``Int8Linear`` replaces). (2) MiniLM end to
end at batch 1 and 32 x seq 128 (real lee.cor sentences): torch fp32 eager vs the model with every
Linear on ``torch._int_mm`` (``to_int8_mm``, dynamic per-token int8 inputs); mean cosine to fp32
on those inputs and the zoo metrics (WordSim-353, SimLex-999, cosine on 148 held-out sentences).
All timings with ``torchslim.benchmark.compare``: interleaved, warm-up, medians (and the fastest
call: on a shared machine load only adds time), 2 threads by default (``--threads 2 1``: one run
per count). Writes benchmarks/results/quantize_int_mm.json (runs merged by thread count).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections.abc import Callable
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from torchslim import zoo
from torchslim._io import write_json
from torchslim._machine import machine_facts
from torchslim.benchmark import BenchmarkConfig, compare
from torchslim.deploy.torch_int8 import Int8Linear, quantize_rows, to_int8_mm
from torchslim.quantize import sqnr_db

RESULT = Path(__file__).parent / "results" / "quantize_int_mm.json"
SHAPES = ((384, 384), (384, 1536), (1536, 384))  # (in_features, out_features) of MiniLM
TOKENS = (128, 4096)
THREADS = 2


def _summary(result: Any) -> dict[str, Any]:
    return {
        name: {
            "median_ms": v.stats.median,
            "min_ms": v.stats.min,
            "p90_ms": v.stats.p90,
            "samples": v.stats.repeats,
            "speedup_vs_baseline": v.speedup,
            "min_speedup_vs_baseline": result.variants[result.baseline].stats.min / v.stats.min,
        }
        for name, v in result.variants.items()
    }


def _rescale(acc: torch.Tensor, scale: torch.Tensor, layer: Int8Linear) -> torch.Tensor:
    """What Int8Linear does after the kernel: int32 -> fp32 x input and weight scales + bias."""
    assert layer.bias is not None
    return torch.addcmul(layer.bias, acc.to(torch.float32).mul_(scale), layer.weight_scale)


def microbenchmark(bench: BenchmarkConfig) -> list[dict[str, Any]]:
    rows = []
    for tokens in TOKENS:
        for k, n in SHAPES:
            torch.manual_seed(0)
            linear = nn.Linear(k, n)
            x = torch.randn(tokens, k)  # (M, K)
            layer = Int8Linear.from_linear(linear)
            weight_t = linear.weight.detach().t()  # (K, N) view, as nn.Linear reads it
            codes, scale = quantize_rows(x)  # (M, K) int8, (M, 1)
            acc = torch._int_mm(codes, layer.weight_int8.t())  # (M, N) int32
            weight_int8_t = layer.weight_int8.t()  # (K, N) view
            variants = {
                "fp32 torch.mm": partial(torch.mm, x, weight_t),
                "torch._int_mm (kernel only)": partial(torch._int_mm, codes, weight_int8_t),
                "quantize input (per token)": partial(quantize_rows, x),
                "rescale + bias": partial(_rescale, acc, scale, layer),
                "Int8Linear (all three)": partial(layer, x),
                "fp32 nn.Linear (mm + bias)": partial(linear, x),
            }
            result = compare(variants, "fp32 torch.mm", bench)
            with torch.no_grad():
                quality = sqnr_db(linear(x), layer(x))
            rows.append(
                {
                    "tokens": tokens,
                    "in_features": k,
                    "out_features": n,
                    "int8_linear_sqnr_db_vs_fp32": round(quality, 2),
                    "variants": _summary(result),
                }
            )
            print(
                tokens,
                k,
                n,
                {m: round(v["median_ms"], 3) for m, v in rows[-1]["variants"].items()},
                flush=True,
            )
    return rows


def end_to_end(bench: BenchmarkConfig, evaluate: bool) -> dict[str, Any]:
    entry = zoo.get("minilm")
    model = entry.load().eval()
    int8 = copy.deepcopy(model)
    conversion = to_int8_mm(int8)
    out: dict[str, Any] = {
        "int8_layers": len(conversion.int8_layers),
        "fp32_layers": conversion.fp32_layers,
        "activations": "int8 symmetric dynamic per token; weights int8 per output channel",
        "batches": {},
    }
    for batch in (1, 32):
        inputs = tuple(entry.example_inputs(batch))  # (B, 128) ids and mask
        variants: dict[str, Callable[[], Any]] = {
            "torch fp32 eager": partial(model, *inputs),
            "torch _int_mm (to_int8_mm)": partial(int8, *inputs),
        }
        result = compare(variants, "torch fp32 eager", bench)
        with torch.inference_mode():
            cosine = F.cosine_similarity(model(*inputs), int8(*inputs), dim=-1)
        out["batches"][str(batch)] = {
            "seq_len": int(inputs[0].shape[1]),
            "cosine_vs_fp32_mean": float(cosine.mean()),
            "cosine_vs_fp32_min": float(cosine.min()),
            "variants": _summary(result),
        }
        print(batch, out["batches"][str(batch)], flush=True)
    if evaluate:
        with torch.inference_mode():
            out["metrics"] = {"fp32": entry.evaluate(model), "int_mm": entry.evaluate(int8)}
        print(out["metrics"], flush=True)
    return out


def run(threads: int, quick: bool, evaluate: bool) -> dict[str, Any]:
    """Both parts at one thread count."""
    rounds = 5 if quick else 25
    micro = BenchmarkConfig(warmup=3, rounds=rounds, threads=threads, max_seconds=3.0)
    model_bench = BenchmarkConfig(warmup=2, rounds=rounds, threads=threads, max_seconds=20.0)
    return {
        "bench_config": {"micro": micro.to_dict(), "end_to_end": model_bench.to_dict()},
        "microbenchmark": microbenchmark(micro),
        "minilm_end_to_end": end_to_end(model_bench, evaluate),
        "machine": machine_facts(),
        "timestamp_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, no zoo metrics")
    parser.add_argument("--threads", type=int, nargs="+", default=[THREADS])
    parser.add_argument("--note", default="", help="recorded as is (e.g. the machine's load)")
    args = parser.parse_args()
    payload: dict[str, Any] = json.loads(RESULT.read_text()) if RESULT.is_file() else {}
    payload.setdefault("runs", {})
    for index, threads in enumerate(args.threads):
        start = time.perf_counter()
        print(f"--- {threads} thread(s)", flush=True)
        result = run(threads, args.quick, evaluate=not args.quick and index == 0)
        result["command"] = "nice -n 5 python benchmarks/quantize_int_mm.py " + " ".join(
            ["--quick"] * args.quick + ["--threads", *map(str, args.threads)]
        )
        result["note"] = args.note
        result["seconds"] = round(time.perf_counter() - start, 1)
        payload["runs"][str(threads)] = result
    payload["what"] = "torch._int_mm int8 Linear vs fp32 on CPU: kernel, full layer, MiniLM e2e"
    payload["runs_by"] = "thread count; each run has its own machine facts, note and timestamp"
    write_json(RESULT, payload)
    print(f"wrote {RESULT}")


if __name__ == "__main__":
    main()

"""SmoothQuant (arXiv 2211.10438) vs plain W8A8, fake-quant accuracy on real zoo models.

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/quantize_smoothquant.py       # ~10 min
    python benchmarks/quantize_smoothquant.py --sections minilm                 # one model

W8A8 here: int8 symmetric per-output-channel weights (QuantConfig weight="int8") and int8
symmetric *per-tensor static* activations (activation="int8", observer="minmax"), every Linear.
For each model: fp32, plain W8A8, and W8A8 after ``smooth_quant_`` at alpha 0.5 and 0.8 (the
paper's groups: q/k/v and gate/up, or BERT's q/k/v and intermediate), and at 0.5 with
``down_proj=True`` (the MLP's down projection smoothed too; beyond the paper). SmolLM2-135M:
perplexity on its Austen (Persuasion) and Lee (lee.cor) eval windows. MiniLM: WordSim-353 and
SimLex-999 Spearman and mean cosine to the fp32 embeddings (the zoo's evaluate). Calibration
(smoothing statistics and activation ranges alike) comes from the zoo entries' calibration
batches, never the eval text (recorded per section). Accuracy only: fake quantization in fp32,
no speed claim. Writes benchmarks/results/quantize_smoothquant.json (sections merged).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchslim import zoo
from torchslim._io import write_json
from torchslim._machine import machine_facts
from torchslim.quantize import QuantConfig, SmoothQuantConfig, quantize_, smooth_quant_

RESULT = Path(__file__).parent / "results" / "quantize_smoothquant.json"
W8A8 = QuantConfig(weight="int8", activation="int8", observer="minmax")
SECTIONS = {
    "smollm2": {
        "entry": "smollm2-135m",
        "smoothing": ((0.5, False), (0.8, False), (0.5, True)),  # (alpha, down_proj)
        "calibration_batches": 8,
        "calibration": "8 windows of 512 tokens, Sense and Sensibility and lee_background.cor "
        "alternating (SmolLM2.calibration_batches)",
        "eval": "perplexity over 8 windows of 512 tokens of Persuasion and of lee.cor",
    },
    "minilm": {
        "entry": "minilm",
        "smoothing": ((0.5, False), (0.8, False), (0.5, True)),  # (alpha, down_proj)
        "calibration_batches": 8,
        "calibration": "8 batches of 16 sentences of Sense and Sensibility padded to 128 tokens "
        "(MiniLM.calibration_batches)",
        "eval": "WordSim-353 / SimLex-999 word lists; cosine on 148 sentences of lee.cor",
    },
}


def _timed_evaluate(entry: zoo.ZooEntry, model: nn.Module) -> dict[str, Any]:
    start = time.perf_counter()
    with torch.no_grad():
        metrics = entry.evaluate(model)
    return {**metrics, "eval_seconds": round(time.perf_counter() - start, 1)}


def _w8a8(model: nn.Module, calibration: list[Any]) -> tuple[nn.Module, dict[str, Any]]:
    quantized = copy.deepcopy(model)
    result = quantize_(quantized, W8A8, calibration)
    sqnr = [layer.activation_sqnr_db for layer in result.layers if layer.activation_sqnr_db]
    return quantized, {
        "layers": len(result.layers),
        "left_in_float": list(result.left_in_float),
        "activation_sqnr_db_median": sorted(sqnr)[len(sqnr) // 2] if sqnr else None,
        "activation_sqnr_db_min": min(sqnr) if sqnr else None,
        "quantize_seconds": round(result.seconds, 1),
    }


def run_section(name: str) -> dict[str, Any]:
    spec = SECTIONS[name]
    entry = zoo.get(str(spec["entry"]))
    model = entry.load().eval()
    calibration = entry.calibration_batches(int(spec["calibration_batches"]))  # type: ignore[call-overload]
    variants: dict[str, Any] = {"fp32": _timed_evaluate(entry, model)}
    print(name, "fp32", variants["fp32"], flush=True)
    plain, info = _w8a8(model, calibration)
    variants["w8a8"] = {**_timed_evaluate(entry, plain), "quantize": info}
    print(name, "w8a8", variants["w8a8"], flush=True)
    del plain
    for alpha, down_proj in spec["smoothing"]:  # type: ignore[attr-defined]
        smoothed = copy.deepcopy(model)
        config = SmoothQuantConfig(alpha=alpha, down_proj=down_proj)
        result = smooth_quant_(smoothed, calibration, config)
        quantized, info = _w8a8(smoothed, calibration)
        groups = [g.to_dict() for g in result.groups]
        key = f"smoothquant_a{alpha}{'_down_proj' if down_proj else ''}_w8a8"
        variants[key] = {
            **_timed_evaluate(entry, quantized),
            "quantize": info,
            "smooth": {
                "config": config.to_dict(),
                "groups": len(groups),
                "modes": sorted({g["mode"] for g in groups}),
                "fold_check_relative_error": result.fold_check_relative_error,
                "outlier_ratio_before_max": max(g["outlier_ratio_before"] for g in groups),
                "outlier_ratio_after_max": max(g["outlier_ratio_after"] for g in groups),
                "seconds": round(result.seconds, 1),
                "per_group": groups,
            },
        }
        print(name, key, {k: v for k, v in variants[key].items() if k != "smooth"}, flush=True)
    return {
        "model": entry.name,
        "w8a8": W8A8.to_dict(),
        "calibration_data": spec["calibration"],
        "eval_data": spec["eval"],
        "calibration_disjoint_from_eval": True,
        "variants": variants,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    args = parser.parse_args()
    start = time.perf_counter()
    payload: dict[str, Any] = json.loads(RESULT.read_text()) if RESULT.is_file() else {}
    payload.setdefault("sections", {})
    for name in args.sections:
        payload["sections"][name] = run_section(name)
        payload["sections"][name]["seconds"] = round(time.perf_counter() - start, 1)
    payload |= {
        "what": "SmoothQuant vs plain W8A8 (per-tensor static int8 activations), fake-quant "
        "accuracy only; no speed claim",
        "paper": "arXiv 2211.10438",
        "command": "OMP_NUM_THREADS=1 nice -n 5 python benchmarks/quantize_smoothquant.py",
        "torch_threads": torch.get_num_threads(),
        "machine": machine_facts(),
        "timestamp_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(RESULT, payload)
    print(f"wrote {RESULT} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()

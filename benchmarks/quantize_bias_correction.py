"""Does empirical bias correction depend on which calibration images it sees? EfficientNet-Lite0.

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/quantize_bias_correction.py

``quantize_accuracy.py`` found bias correction (one pass, Nagel et al. arXiv:1906.04721) of the
auto per-tensor W8A8 EfficientNet-Lite0 better with its first 20 calibration images than with all
100. This run builds that model once, then corrects copies of it with each of the five disjoint
20-image slices of the calibration set and with all 100, and reports top-1 agreement and KL vs
fp32 on the 320 held-out crops (and the zoo's 80) for each, next to the uncorrected model: the
spread over the 20-image slices says whether 20 vs 100 is a real effect or which photos were
seen. The same six corrections are then repeated on the depthwise convs only
(``depthwise_layers``): correcting every layer got worse with more images (and even when computed
on the held-out crops themselves), the depthwise-only variant did not (see bias_correction.py).
Guarded correction (``correct_bias_guarded_``: a layer's correction kept only if the output on
the calibration images gets closer to fp32) runs on images 0-19 and 0-99; ``--guarded-only``
recomputes just those rows and keeps the rest of the JSON.
Writes benchmarks/results/quantize_bias_correction.json.
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

sys.path.insert(0, str(Path(__file__).parent))
from quantize_accuracy import _agreement, _efficientnet_crops
from torchslim import zoo
from torchslim._io import write_json
from torchslim._machine import machine_facts
from torchslim.quantize import QuantConfig, quantize_
from torchslim.quantize.bias_correction import (
    correct_bias_guarded_,
    correct_bias_one_pass_,
    depthwise_layers,
)
from torchslim.quantize.fold import fold_batchnorm_
from torchslim.zoo.efficientnet import _logits

OUTPUT = Path(__file__).parent / "results" / "quantize_bias_correction.json"


def corrected_row(
    model: torch.nn.Module,
    batches: list[Any],
    crops: torch.Tensor,
    reference: torch.Tensor,
    depthwise_only: bool = False,
    guarded: bool = False,
) -> dict[str, Any]:
    """Agreement of a bias-corrected copy of ``model`` (on ``batches``) with fp32; every layer
    corrected, only the depthwise convs, or (``guarded``) each layer's correction kept only if
    the output on ``batches`` gets closer to fp32 (``correct_bias_guarded_``)."""
    corrected = copy.deepcopy(model)
    start = time.perf_counter()
    if guarded:
        corrections = correct_bias_guarded_(corrected, batches)
    else:
        names = depthwise_layers(corrected) if depthwise_only else None
        corrections = correct_bias_one_pass_(corrected, batches, names)
    extra = {"layers_kept": sum(v > 0 for v in corrections.values())} if guarded else {}
    return {
        **extra,
        "held_out_320": _agreement(corrected, crops, reference),
        "zoo_80": zoo.get("efficientnet-lite0").evaluate(corrected),
        "bias_correction_seconds": round(time.perf_counter() - start, 1),
        "largest_correction": round(max(corrections.values()), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--note", default="", help="e.g. the machine's load")
    parser.add_argument(
        "--guarded-only",
        action="store_true",
        help="only (re)compute the guarded rows; the other rows are kept from the JSON",
    )
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    entry = zoo.get("efficientnet-lite0")
    calibration = entry.calibration_batches(10)  # the 100 images, 10 per batch
    crops = _efficientnet_crops()
    reference = _logits(entry.load(), crops)  # (320, 1000)
    model = entry.load()
    fold_batchnorm_(model)
    config = QuantConfig(activation="uint8", weight="int8-tensor", escalate=True)
    quantize_(model, config, calibration)
    rows: dict[str, Any] = {
        "none": {
            "held_out_320": _agreement(model, crops, reference),
            "zoo_80": entry.evaluate(model),
        }
    }
    slices = {f"images_{20 * i}-{20 * i + 19}": calibration[2 * i : 2 * i + 2] for i in range(5)}
    guarded = {
        name: corrected_row(model, batches, crops, reference, guarded=True)
        for name, batches in {
            "images_0-19": slices["images_0-19"],
            "images_0-99": calibration,
        }.items()
    }
    print("guarded", guarded, flush=True)
    if args.guarded_only:
        payload = json.loads(OUTPUT.read_text())
        payload["guarded"] = guarded
        payload["guarded_command"] = " ".join(["python", *sys.argv])
        payload["guarded_note"] = args.note
        write_json(OUTPUT, payload)
        return
    for name, batches in {**slices, "images_0-99": calibration}.items():
        rows[name] = corrected_row(model, batches, crops, reference)
        print(name, rows[name], flush=True)
    depthwise: dict[str, Any] = {}
    for name, batches in {**slices, "images_0-99": calibration}.items():
        depthwise[name] = corrected_row(model, batches, crops, reference, depthwise_only=True)
        print("depthwise only", name, depthwise[name], flush=True)
    kls = [rows[name]["held_out_320"]["kl_vs_fp32"] for name in slices]
    agreements = [rows[name]["held_out_320"]["top1_agreement"] for name in slices]
    dw_kls = [depthwise[name]["held_out_320"]["kl_vs_fp32"] for name in slices]
    write_json(
        OUTPUT,
        {
            "model": "efficientnet-lite0, BN folded, QuantConfig(activation='uint8', "
            "weight='int8-tensor', escalate=True) (observer auto)",
            "calibration": "the zoo's 100 calibration images: 10 photos x 5 crops, then their "
            "mirrors; slice i = images 20i..20i+19",
            "command": "OMP_NUM_THREADS=1 nice -n 5 python benchmarks/quantize_bias_correction.py "
            + shlex.join(sys.argv[1:]),
            "note": args.note,
            "results": rows,
            "slices_20_images_held_out": {
                "kl_min": min(kls),
                "kl_max": max(kls),
                "top1_agreement_min": min(agreements),
                "top1_agreement_max": max(agreements),
            },
            "depthwise_only": {
                "layers": len(depthwise_layers(model)),
                "results": depthwise,
                "slices_20_images_held_out_kl_min": min(dw_kls),
                "slices_20_images_held_out_kl_max": max(dw_kls),
            },
            "guarded": guarded,
            "machine": machine_facts(),
            "timestamp_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
    )


if __name__ == "__main__":
    main()

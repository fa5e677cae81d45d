"""Accuracy of torchslim's fake-quant transforms on real zoo models, packed sizes, PTQ time.

    python benchmarks/quantize_accuracy.py            # everything (~30 min on 2 busy cores)
    python benchmarks/quantize_accuracy.py --quick    # fewer iterations / samples (~5 min)
    python benchmarks/quantize_accuracy.py --sections mnist efficientnet   # some, merged

Sections: mnist (mnist-cnn W8A8, W4A8 plain / +AdaRound, binary and ternary PTQ, binary and
ternary after QAT), resnet20 (fashion-resnet20 W8A8 PTQ, 512 calibration images), ptq_time (that
PTQ's wall and CPU time at 1 and 2 threads), qat (fashion-resnet20 QAT W4A4 with LSQ),
efficientnet (efficientnet-lite0 W8A8, per-channel and per-tensor weights, observer auto vs
minmax), pareto (mnist-cnn sensitivity + mixed-precision Pareto front, JSON + PNG), smollm2
(SmolLM2-135M weight-only int4 groups: round-to-nearest vs GPTQ, perplexity).
Accuracy is simulated (fake-quant in fp32); deployment speed is measured elsewhere.
Writes benchmarks/results/quantize_accuracy.json (sections merged into an existing file).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchslim import zoo
from torchslim._io import save_tensors, write_json
from torchslim._machine import machine_facts
from torchslim.quantize import QuantConfig, quantize_, save_quantized
from torchslim.quantize.adaround import AdaRoundConfig, adaround_
from torchslim.quantize.fold import fold_batchnorm_
from torchslim.quantize.gptq import gptq_
from torchslim.quantize.mixed_precision import greedy_path, pareto_front, save_pareto
from torchslim.quantize.qat import prepare_qat_, train_qat
from torchslim.quantize.sensitivity import analyze_sensitivity
from torchslim.train import TrainConfig
from torchslim.zoo.vision import accuracy

RESULTS = Path(__file__).parent / "results"
OUTPUT = RESULTS / "quantize_accuracy.json"
PARETO_JSON = RESULTS / "quantize_pareto_mnist.json"
PARETO_PNG = RESULTS / "quantize_pareto_mnist.png"
PARETO_JSON = RESULTS / "quantize_pareto_mnist.json"
PARETO_PNG = RESULTS / "quantize_pareto_mnist.png"


def packed_sizes(model_fp32: nn.Module, model_q: nn.Module) -> dict[str, Any]:
    """Bytes on disk of the fp32 safetensors and of the packed quantized file."""
    with tempfile.TemporaryDirectory() as tmp:
        save_tensors(Path(tmp) / "fp32.safetensors", model_fp32.state_dict())
        save_quantized(model_q, Path(tmp) / "q.safetensors")
        fp32 = (Path(tmp) / "fp32.safetensors").stat().st_size
        quantized = (Path(tmp) / "q.safetensors").stat().st_size
    return {"fp32_bytes": fp32, "packed_bytes": quantized, "ratio": round(fp32 / quantized, 2)}


def ptq(
    name: str, config: QuantConfig, calibration: list[Any] | None, fold: bool = False
) -> tuple[nn.Module, dict[str, Any]]:
    entry = zoo.get(name)
    model = entry.load()
    start, cpu_start = time.perf_counter(), time.process_time()
    if fold:
        fold_batchnorm_(model)
    result = quantize_(model, config, calibration)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return model, {
        "ptq_seconds": round(seconds, 2),
        "ptq_cpu_seconds": round(cpu_seconds, 2),
        "layers": result.to_dict()["layers"],
    }


def _row(entry_name: str, model: nn.Module, info: dict[str, Any]) -> dict[str, Any]:
    entry = zoo.get(entry_name)
    return {**entry.evaluate(model), **packed_sizes(entry.load(), model), **info}


def digits_heldout() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """mnist-cnn's 5 000 digits split as its calibration split is: the first 100 of each digit
    (1 000, used to train QAT) and the other 4 000 (never seen by QAT)."""
    from torchslim.zoo import images

    x, y = images.opencv_digits()
    seen = torch.zeros(len(x), dtype=torch.bool)
    for digit in range(10):
        seen[digit * 500 : digit * 500 + 100] = True
    return x[seen], y[seen], x[~seen], y[~seen]


def section_mnist(quick: bool) -> dict[str, Any]:
    entry = zoo.get("mnist-cnn")
    calibration = entry.calibration_batches(32)  # the 1 000 calibration digits
    rows: dict[str, Any] = {"fp32": entry.evaluate(entry.load())}
    w8a8 = QuantConfig(weight="int8", activation="uint8")
    w4a8 = QuantConfig(weight="int4", activation="uint8")
    for scheme, config in (("w8a8", w8a8), ("w4a8", w4a8)):
        model, info = ptq("mnist-cnn", config, calibration)
        rows[scheme] = _row("mnist-cnn", model, info)
    model, info = ptq("mnist-cnn", w4a8, calibration)
    iterations = 100 if quick else 500
    start = time.perf_counter()
    report = adaround_(model, calibration, AdaRoundConfig(iterations=iterations))
    info["adaround_seconds"] = round(time.perf_counter() - start, 1)
    info["adaround_iterations_per_layer"] = iterations
    info["adaround_layers"] = report
    rows["w4a8_adaround"] = _row("mnist-cnn", model, info)
    for weight in ("binary", "ternary"):
        model, info = ptq("mnist-cnn", QuantConfig(weight=weight), calibration)
        rows[f"{weight}_ptq"] = _row("mnist-cnn", model, info)
        rows[f"{weight}_qat"] = mnist_qat(weight, quick)
    return rows


def mnist_qat(weight: str, quick: bool) -> dict[str, Any]:
    """QAT of mnist-cnn with binary/ternary weights (fp32 activations) on the 1 000 calibration
    digits; accuracy reported on the 4 000 digits QAT never saw, and on all 5 000."""
    entry = zoo.get("mnist-cnn")
    seen_x, seen_y, held_x, held_y = digits_heldout()
    model = entry.load()
    prepare_qat_(model, QuantConfig(weight=weight))
    epochs = 3 if quick else 15
    config = TrainConfig(epochs=epochs, batch_size=50, lr=0.01, weight_decay=0.0, augment=False,
                         amp="off", checkpoint_every_steps=1000)  # fmt: skip
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        train_qat(model, config, (seen_x, seen_y), tmp)
    return {
        "train": f"{epochs} epochs on the 1 000 calibration digits, lr 0.01, no augmentation",
        "train_seconds": round(time.perf_counter() - start, 1),
        "accuracy_heldout_4000": accuracy(model, held_x, held_y),
        "fp32_accuracy_heldout_4000": accuracy(entry.load(), held_x, held_y),
        **entry.evaluate(model),
        **packed_sizes(entry.load(), model),
    }


def section_resnet20(quick: bool) -> dict[str, Any]:
    entry = zoo.get("fashion-resnet20")
    calibration = entry.calibration_batches(16)  # 16 x 32 = 512 training images
    config = QuantConfig(weight="int8", activation="uint8")
    model, info = ptq("fashion-resnet20", config, calibration, fold=True)
    info["ptq_includes"] = "BN folding + quantize_ with observer auto (2 calibration passes)"
    info["calibration_images"] = 512
    info["ptq_timing"] = "see section ptq_time (1 and 2 threads, with the load average)"
    return {"fp32": entry.evaluate(entry.load()), "w8a8": _row("fashion-resnet20", model, info)}


def section_ptq_time(quick: bool) -> dict[str, Any]:
    """PTQ wall and CPU time of fashion-resnet20 (BN folding + quantize_ W8A8, observer auto,
    512 calibration images) at 1 and 2 threads, with the machine's load average: on a shared
    machine the wall time is inflated by the other jobs, the CPU time much less so."""
    entry = zoo.get("fashion-resnet20")
    calibration = entry.calibration_batches(16)  # 16 x 32 = 512 training images
    config = QuantConfig(weight="int8", activation="uint8")
    rows: dict[str, Any] = {}
    previous = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            load_before = os.getloadavg()[0]
            _, info = ptq("fashion-resnet20", config, calibration, fold=True)
            info.pop("layers")
            rows[f"threads_{threads}"] = {**info, "load_average_1min_before": load_before}
    finally:
        torch.set_num_threads(previous)
    return rows


def section_qat(quick: bool) -> dict[str, Any]:
    entry = zoo.get("fashion-resnet20")
    model = entry.load()
    fold_batchnorm_(model)
    config = QuantConfig(
        weight="int4", activation="uint4", observer="mse",
        overrides={"conv1": "int8", "fc": "int8"}, activation_overrides={"conv1": "uint8"},
    )  # fmt: skip
    prepare_qat_(model, config, entry.calibration_batches(8))
    before = entry.evaluate(model)
    inputs, labels = entry.train_data()
    count = 2560 if quick else 20000
    train_config = TrainConfig(epochs=1, batch_size=128, lr=0.005, weight_decay=5e-5,
                               amp="off", checkpoint_every_steps=50)  # fmt: skip
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        train_qat(model, train_config, (inputs[:count], labels[:count]), tmp)
    return {
        "scheme": "W4A4 (LSQ) with the first conv and the classifier at int8 weights, the first "
        "conv's input at uint8 (as in the LSQ paper); BN folded first",
        "ptq_before_qat": before,
        "train": f"1 epoch on the first {count} training images, lr 0.005, batch 128",
        "train_seconds": round(time.perf_counter() - start, 1),
        "fp32": entry.evaluate(entry.load()),
        "qat_w4a4": {**entry.evaluate(model), **packed_sizes(entry.load(), model)},
    }


def _efficientnet_crops() -> torch.Tensor:
    """More held-out crops than the zoo's 80: the 16 eval photos (never calibrated on), short
    side resized to 256 and to 320, centre + 4 corner 224 crops, each also mirrored: (320, 3,
    224, 224), normalised as the zoo entry does."""
    import numpy as np
    from PIL import Image

    from torchslim.zoo import efficientnet as effnet
    from torchslim.zoo._assets import debian_file

    crops = []
    size = effnet.IMAGE_SIZE
    for name in effnet.EVAL_PHOTOS:
        image = Image.open(debian_file(f"opencv-photos/{name}")).convert("RGB")
        for short_side in (256, 320):
            scale = short_side / min(image.size)
            resized = image.resize(
                (round(image.width * scale), round(image.height * scale)),
                Image.Resampling.BICUBIC,
            )
            pixels = torch.from_numpy(np.asarray(resized, dtype=np.float32)).permute(2, 0, 1)
            pixels = (pixels - effnet.PIXEL_MEAN) / effnet.PIXEL_STD  # (3, H, W)
            _, h, w = pixels.shape
            corners = [((h - size) // 2, (w - size) // 2), (0, 0), (0, w - size),
                       (h - size, 0), (h - size, w - size)]  # fmt: skip
            for y, x in corners:
                crop = pixels[:, y : y + size, x : x + size]  # (3, 224, 224)
                crops += [crop, crop.flip(-1)]
    return torch.stack(crops)


def _agreement(model: nn.Module, images: torch.Tensor, reference: torch.Tensor) -> dict[str, Any]:
    """Top-1 agreement and mean KL(fp32 || model) of the logits, as the zoo entry computes."""
    import torch.nn.functional as F

    from torchslim.zoo.efficientnet import _logits

    logits = _logits(model.eval(), images)  # (N, 1000)
    log_p, log_q = F.log_softmax(reference, -1), F.log_softmax(logits, -1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)  # (N,)
    agree = (logits.argmax(-1) == reference.argmax(-1)).float().mean()
    return {"top1_agreement": float(agree), "kl_vs_fp32": float(kl.mean()), "images": len(images)}


def _auto_summary(layers: list[dict[str, Any]]) -> dict[str, Any]:
    """What quantize_ chose per layer: formats, observers, escalations, worst output SQNR."""
    count: dict[str, int] = {}
    for layer in layers:
        key = f"weight {layer['weight_format']} ({layer['weight_observer']}), input "
        key += f"{layer['activation_format']} ({layer['observer']})"
        count[key] = count.get(key, 0) + 1
    outputs = [layer for layer in layers if isinstance(layer.get("output_sqnr_db"), float)]
    worst = min(outputs, key=lambda layer: layer["output_sqnr_db"]) if outputs else None
    weakest = min(layers, key=lambda layer: layer["weight_sqnr_db"])
    escalated = {layer["name"]: layer["escalation"] for layer in layers if layer["escalation"]}
    return {
        "formats_and_observers": count,
        "escalated_layers": len(escalated),
        "escalated": escalated,
        "worst_layer_output_sqnr_db": None
        if worst is None
        else {"name": worst["name"], "output_sqnr_db": worst["output_sqnr_db"]},
        "worst_weight_layer": {k: weakest[k] for k in ("name", "weight_sqnr_db")},
    }


def _bias_corrected_rows(
    model: nn.Module, calibration: list[Any], crops: torch.Tensor, reference: torch.Tensor
) -> dict[str, Any]:
    """The auto per-tensor model after empirical bias correction on 20 and on 100 images."""
    import copy

    from torchslim.quantize.bias_correction import correct_bias_one_pass_

    entry, rows = zoo.get("efficientnet-lite0"), {}
    for batches in sorted({2, len(calibration)}):
        corrected = copy.deepcopy(model)
        start = time.perf_counter()
        corrections = correct_bias_one_pass_(corrected, calibration[:batches])
        rows[f"auto_w8tensor_a8_bias_corrected_{10 * batches}img"] = {
            "zoo_80": entry.evaluate(corrected),
            "held_out_320": _agreement(corrected, crops, reference),
            "bias_correction_seconds": round(time.perf_counter() - start, 1),
            "largest_correction": round(max(corrections.values()), 4),
        }
    return rows


def section_efficientnet(quick: bool) -> dict[str, Any]:
    """W8A8 (uint8 inputs) on EfficientNet-Lite0, BN folded: the textbook naive min-max
    (per-tensor weights and inputs), per-channel min-max, and observer "auto" (inputs by layer
    output SQNR) with per-tensor and per-channel weight requests, with and without escalation of
    collapsing layers, plus CLE and bias correction; each vs fp32 on the zoo's 80 crops and on
    320 held-out crops."""
    from torchslim.quantize import QuantFormat
    from torchslim.quantize.equalize import equalize_
    from torchslim.zoo.efficientnet import _logits

    entry = zoo.get("efficientnet-lite0")
    calibration = entry.calibration_batches(4 if quick else 10)  # 10 images each
    crops = _efficientnet_crops()
    reference_logits = _logits(entry.load(), crops)  # (320, 1000)
    variants: dict[str, tuple[dict[str, Any], bool]] = {
        "naive_minmax_w8tensor_a8": ({"weight": "int8-tensor", "observer": "minmax"}, False),
        "minmax_w8channel_a8": ({"weight": "int8", "observer": "minmax"}, False),
        "auto_w8tensor_a8_no_escalation": ({"weight": "int8-tensor"}, False),
        "auto_w8tensor_a8": ({"weight": "int8-tensor", "escalate": True}, False),
        "auto_w8channel_a8": ({"weight": "int8", "escalate": True}, False),
        "auto_w8tensor_a8_cle": ({"weight": "int8-tensor", "escalate": True}, True),
    }
    if quick:
        variants.pop("auto_w8tensor_a8_cle")
    rows: dict[str, Any] = {
        "fp32": entry.evaluate(entry.load()),
        "eval_sets": "zoo_80: the entry's 80 crops (16 photos x 5); held_out_320: the same 16 "
        "photos at short side 256 and 320, 5 crops each, plus mirrors (never calibrated on)",
        "calibration_images": 10 * len(calibration),
        "collapse_floor_db_at_8_bits": QuantConfig().collapse_floor_db(QuantFormat.parse("int8")),
    }
    for key, (options, equalize) in variants.items():
        config = QuantConfig(activation="uint8", **options)
        model = entry.load()
        start = time.perf_counter()
        fold_batchnorm_(model)
        chains = equalize_(model) if equalize else []
        result = quantize_(model, config, calibration)
        seconds = time.perf_counter() - start
        layers = result.to_dict()["layers"]
        rows[key] = {
            "config": config.to_dict(),
            "zoo_80": entry.evaluate(model),
            "held_out_320": _agreement(model, crops, reference_logits),
            "ptq_seconds": round(seconds, 1),
            **({"equalized_pairs": [[c.producer, c.consumer] for c in chains]} if equalize else {}),
            **_auto_summary(layers),
            "layers": layers,
        }
        print(key, rows[key]["zoo_80"], rows[key]["held_out_320"], flush=True)
        if key == "auto_w8tensor_a8":
            rows.update(_bias_corrected_rows(model, calibration, crops, reference_logits))
    return rows


def section_pareto(quick: bool) -> dict[str, Any]:
    entry = zoo.get("mnist-cnn")
    calibration = entry.calibration_batches(4)
    _, _, held_x, held_y = digits_heldout()
    subset = (held_x[:1000], held_y[:1000]) if quick else (held_x, held_y)

    def metric(model: nn.Module) -> float:
        return accuracy(model, *subset)

    formats = ("int8", "int4", "int2")
    report = analyze_sensitivity(entry.load(), formats, calibration, metric)
    measured, front = pareto_front(
        entry.load, report, calibration, metric, points=6 if quick else 10
    )
    save_pareto(measured, front, PARETO_JSON, PARETO_PNG, "mnist-cnn weight bits per layer")
    return {
        "metric": "accuracy on the 4 000 digits outside the calibration split"
        + (" (first 1 000 in --quick)" if quick else ""),
        "sensitivity": report.to_dict(),
        "greedy_path_length": len(greedy_path(report)),
        "front": [p.to_dict() for p in front],
        "files": [
            "benchmarks/results/quantize_pareto_mnist.json",
            "benchmarks/results/quantize_pareto_mnist.png",
        ],
    }


def section_smollm2(quick: bool) -> dict[str, Any]:
    """Weight-only int4 with groups on SmolLM2-135M: round-to-nearest (min-max and MSE-clipped
    scales) vs GPTQ. Its weights come from a Q4_1 GGUF (groups of 32), so 4-bit is judged at
    group sizes 64 and 192, where the old grid does not line up."""
    entry = zoo.get("smollm2-135m")
    calibration = entry.calibration_batches(4 if quick else 16)  # 512-token windows
    rows: dict[str, Any] = {"fp32": entry.evaluate(entry.load())}
    for group in (192,) if quick else (64, 192):  # divide 576 and 1536 (its widths)
        weight = f"int4-g{group}"
        for method in ("rtn_minmax", "rtn_mse", "gptq"):
            observer = "auto" if method == "rtn_mse" else "minmax"
            config = QuantConfig(weight=weight, observer=observer, ignore=("re:.*lm_head",))
            model, info = ptq("smollm2-135m", config, None)
            if method == "gptq":
                start = time.perf_counter()
                report = gptq_(model, calibration)
                info["gptq_seconds"] = round(time.perf_counter() - start, 1)
                ratios = [v["loss_gptq"] / max(v["loss_nearest"], 1e-30) for v in report.values()]
                info["gptq_loss_ratio_median"] = round(sorted(ratios)[len(ratios) // 2], 3)
            info.pop("layers")
            rows[f"{weight}_{method}"] = {**entry.evaluate(model), **info}
    rows["calibration"] = f"{len(calibration)} windows of 512 tokens (Sense and Sensibility, Lee)"
    return rows


SECTIONS: dict[str, Callable[[bool], dict[str, Any]]] = {
    "mnist": section_mnist, "resnet20": section_resnet20, "ptq_time": section_ptq_time,
    "qat": section_qat,
    "efficientnet": section_efficientnet, "pareto": section_pareto, "smollm2": section_smollm2,
}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations and samples")
    parser.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (PTQ timing: 2)")
    parser.add_argument("--note", default="", help="e.g. the machine's load")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    payload: dict[str, Any] = json.loads(OUTPUT.read_text()) if OUTPUT.is_file() else {}
    payload.setdefault("sections", {})
    for name in args.sections:
        start = time.perf_counter()
        print(f"[{name}] ...", flush=True)
        result = SECTIONS[name](args.quick)
        result["section_seconds"] = round(time.perf_counter() - start, 1)
        result["quick"] = args.quick
        policy = os.environ.get("OMP_WAIT_POLICY")  # spinning OpenMP threads on a busy machine
        key = f"{name} (OMP_WAIT_POLICY={policy})" if policy else name
        result["command"] = (
            (f"OMP_WAIT_POLICY={policy} " if policy else "")
            + "python benchmarks/quantize_accuracy.py"
            + (" --quick" if args.quick else "")
            + f" --sections {name}"
        )
        payload["sections"][key] = result
        payload["machine"] = machine_facts()
        payload["timestamp_utc"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        payload["note"] = args.note
        write_json(OUTPUT, payload)  # after each section, so a long run keeps what it measured
        print(json.dumps(result, default=str)[:2000], flush=True)


if __name__ == "__main__":
    main()

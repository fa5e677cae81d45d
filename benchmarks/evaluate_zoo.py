"""Eager fp32 vs channels_last, bf16 autocast and ONNX Runtime on a zoo model, same inputs, CPU.

    python benchmarks/evaluate_zoo.py                      # fashion-resnet20 (or mnist-cnn)
    python benchmarks/evaluate_zoo.py --model fashion-cnn --batch-sizes 1 8 64

Writes benchmarks/results/evaluate_zoo-<model>.json and prints one table per batch size.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import warnings
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

import torchslim.zoo
from torchslim._machine import bf16_in_hardware, machine_facts
from torchslim.benchmark import BenchmarkConfig, compare, max_abs_diff, write_result_json
from torchslim.errors import MissingAssetError

RESULTS = Path(__file__).parent / "results"
Variant = Callable[[], Any]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fashion-resnet20", help="zoo entry name")
    parser.add_argument("--fallback", default="mnist-cnn", help="used if --model is not trained")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--rounds", type=int, default=30, help="timed calls per variant, at most")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--max-seconds", type=float, default=5.0, help="time budget per variant")
    parser.add_argument("--threads", type=int, default=None, help="default: torch's current")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--note", default="", help="recorded in the JSON (e.g. machine load)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    return parser.parse_args()


def load_model(name: str, fallback: str) -> tuple[str, nn.Module, str | None]:
    """The zoo model ``name``, or ``fallback`` (with the reason) if its checkpoint is missing."""
    try:
        return name, torchslim.zoo.get(name).load(), None
    except MissingAssetError as error:
        reason = f"{name} is not available ({error}); measured {fallback} instead"
        return fallback, torchslim.zoo.get(fallback).load(), reason


def export_onnx(
    model: nn.Module, inputs: tuple[Any, ...], path: Path
) -> tuple[str | None, dict[str, str]]:
    """Export with the torch.export-based exporter, else the TorchScript one; errors by exporter."""
    errors: dict[str, str] = {}
    for exporter, dynamo in (("dynamo", True), ("torchscript", False)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter warns
                torch.onnx.export(model, inputs, str(path), dynamo=dynamo, verbose=False)
            return exporter, errors
        except Exception as error:  # any exporter failure is recorded, not fatal
            errors[exporter] = f"{type(error).__name__}: {str(error).splitlines()[0]}"
    return None, errors


def onnxruntime_variant(
    model: nn.Module, inputs: tuple[Any, ...], path: Path, threads: int
) -> tuple[Variant | None, dict[str, Any]]:
    """An ONNX Runtime session on the exported model, or ``None`` and why."""
    import onnxruntime as ort

    exporter, errors = export_onnx(model, inputs, path)
    info: dict[str, Any] = {"onnxruntime_version": ort.__version__, "exporter": exporter}
    info |= {"export_errors": errors, "intra_op_threads": threads}
    if exporter is None:
        return None, info
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    # ORT's worker threads spin after each run by default; interleaved with torch calls they
    # steal the cores torch needs and make every other variant look slower.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = {arg.name: x.numpy() for arg, x in zip(session.get_inputs(), inputs, strict=True)}
    return (lambda: session.run(None, feeds)[0]), info


def variants_for(
    model: nn.Module, inputs: tuple[Any, ...], workdir: Path, threads: int
) -> tuple[dict[str, Variant], dict[str, str], dict[str, Any]]:
    """Every variant on the same input values; skipped ones with reasons; ONNX details."""
    # Module.to(memory_format=...) works but torch's overloads omit it
    model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    inputs_cl = tuple(x.contiguous(memory_format=torch.channels_last) for x in inputs)
    variants: dict[str, Variant] = {
        "eager-fp32": lambda: model(*inputs),
        "channels-last-fp32": lambda: model_cl(*inputs_cl),
    }
    skipped: dict[str, str] = {}
    if bf16_in_hardware():

        def bf16_autocast() -> Any:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return model(*inputs)

        variants["bf16-autocast"] = bf16_autocast
    else:
        skipped["bf16-autocast"] = "no bf16 in hardware (no AVX512-BF16/AMX): emulated, not run"
    batch = inputs[0].shape[0]
    session, onnx_info = onnxruntime_variant(model, inputs, workdir / f"b{batch}.onnx", threads)
    if session is None:
        skipped["onnxruntime"] = "ONNX export failed: " + "; ".join(
            f"{k}: {v}" for k, v in onnx_info["export_errors"].items()
        )
    else:
        variants["onnxruntime"] = session
    return variants, skipped, onnx_info


def main() -> None:
    args = parse_args()
    console = Console()
    if not console.is_terminal:  # a log file or pipe: rich would fall back to 80 columns
        console = Console(width=120)
    config = BenchmarkConfig(args.warmup, args.rounds, args.threads, args.max_seconds, args.seed)
    name, model, fallback_reason = load_model(args.model, args.fallback)
    if fallback_reason:
        console.print(f"[yellow]{fallback_reason}[/yellow]")
    threads = args.threads or torch.get_num_threads()
    entry = torchslim.zoo.get(name)
    per_batch: dict[str, Any] = {}
    onnx: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as workdir:
        for batch_size in args.batch_sizes:
            inputs = entry.example_inputs(batch_size)
            variants, skipped, onnx[str(batch_size)] = variants_for(
                model, inputs, Path(workdir), threads
            )
            result = compare(variants, "eager-fp32", config, check=max_abs_diff)
            result.skipped.update(skipped)
            console.print(result.to_table(title=f"{name}, batch {batch_size}, {threads} threads"))
            per_batch[str(batch_size)] = result.to_dict()
    payload = {
        "benchmark": "evaluate_zoo",
        "model": name,
        "requested_model": args.model,
        "fallback_reason": fallback_reason,
        "timestamp_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "note": args.note,
        "machine": machine_facts(),
        "onnx": onnx,
        "batch_sizes": per_batch,
    }
    path = write_result_json(f"evaluate_zoo-{name}", payload, args.out_dir)
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""Static INT8 (W8A8) on CPU: torchslim deploy(auto) against its peers, in ONE run, same inputs.

    python benchmarks/quantize_peers.py                 # fashion-resnet20 + 56, batch 1 and 16
    python benchmarks/quantize_peers.py --quick --model fashion-resnet20 --batch-sizes 1,16

Per model: torch fp32 eager (baseline), ONNX Runtime fp32, ONNX Runtime quantize_static QDQ
U8S8 and S8S8 (its defaults: per-tensor weights, MinMax), OpenVINO + NNCF INT8 (convert_model
-> nncf.quantize, default CPU plugin settings), torch PT2E x86-inductor (torchao's
X86InductorQuantizer + torch.compile) and torchslim ``deploy(backend="auto")`` (built per batch
size, since it measures at the batch size it is asked for). Every variant: 2 threads (ONNX
Runtime intra_op_num_threads=2, spinning off; OpenVINO INFERENCE_NUM_THREADS=2), the same
calibration batches, latency median/p90 interleaved with fp32 eager, each variant loaded alone
in its own worker process (``--timing isolated``, the default: in one shared process the
runtimes' thread pools slow each other down; inductor-compiled code brings its own OpenMP pool
that made OpenVINO 1.6x slower next to it), speed-up vs fp32 eager,
top-1 accuracy on the zoo eval set, size on disk. Then mnist-cnn: accuracy of every INT8 peer on
the 5 000 real digits. Writes benchmarks/results/quantize_peers.json.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

import torchslim.zoo
from torchslim._machine import machine_facts
from torchslim.benchmark import (
    BenchmarkConfig,
    Isolation,
    WorkerVariant,
    compare,
    compare_on_inputs,
    load_inputs,
    write_result_json,
)
from torchslim.deploy import DeployConfig, deploy
from torchslim.deploy._onnx import export_onnx, input_names
from torchslim.deploy._runtime import missing_module, to_numpy
from torchslim.deploy.onnxruntime_backend import OnnxRuntimeRunner
from torchslim.evaluate.size import saved_size_bytes

RESULTS = Path(__file__).parent / "results"
THREADS = 2
BASELINE = "torch-fp32-eager"


class RuntimeModule(nn.Module):
    """A peer's runtime as an nn.Module, so the zoo's evaluate() measures its accuracy."""

    def __init__(self, runtime: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.runtime = runtime

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.runtime(*inputs)


@dataclass
class Variant:
    """A peer or torchslim result: the in-process module (accuracy, in-process timing), its size,
    and ``worker``: the factory + kwargs that rebuild it alone in a fresh process (timing)."""

    module: nn.Module
    size_bytes: int
    info: dict[str, Any] = field(default_factory=dict)
    worker: WorkerVariant | None = None


# ---------------------------------------------------------------- worker factories
# Each rebuilds one variant in a fresh process from files (or, for PT2E, which has no file form,
# from the zoo entry and the same calibration batches) and returns the call to time on the
# inputs saved at ``inputs``.


def eager_worker(model_name: str, inputs: str) -> Callable[[], Any]:
    model, batch = torchslim.zoo.get(model_name).load().eval(), load_inputs(inputs)
    return lambda: model(*batch)


def ort_worker(path: str, inputs: str) -> Callable[[], Any]:
    runner, batch = OnnxRuntimeRunner(Path(path), THREADS), load_inputs(inputs)
    return lambda: runner(*batch)


def cast_worker(model_name: str, dtype: str, inputs: str) -> Callable[[], Any]:
    """The zoo model cast to ``dtype`` in torch eager (torchslim.deploy.CastModel)."""
    from torchslim.deploy import CastModel

    model = CastModel(torchslim.zoo.get(model_name).load(), getattr(torch, dtype))
    batch = load_inputs(inputs)
    return lambda: model(*batch)


def openvino_worker(xml: str, inputs: str, precision: str | None = None) -> Callable[[], Any]:
    """OpenVINO on ``xml`` with 2 threads; ``precision``: an INFERENCE_PRECISION_HINT, or the
    plugin's default (bf16 on CPUs with bf16 compute)."""
    import openvino as ov

    properties: dict[str, Any] = {"INFERENCE_NUM_THREADS": THREADS}
    if precision is not None:
        properties["INFERENCE_PRECISION_HINT"] = precision
    compiled = ov.Core().compile_model(xml, "CPU", properties)
    request, arrays = compiled.create_infer_request(), to_numpy(load_inputs(inputs))
    return lambda: request.infer(dict(enumerate(arrays)))


def pt2e_worker(model_name: str, calibration_batches: int, inputs: str) -> Callable[[], Any]:
    entry = torchslim.zoo.get(model_name)
    variant = torch_pt2e(entry.load().eval(), entry.calibration_batches(calibration_batches))
    batch = load_inputs(inputs)
    return lambda: variant.module(*batch)


def deployed_worker(directory: str, inputs: str) -> Callable[[], Any]:
    from torchslim.deploy import load_deployed

    # the thread count deploy chose (at most THREADS; 1 where one core measured faster)
    deployed, batch = load_deployed(directory), load_inputs(inputs)
    return lambda: deployed(*batch)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", help="zoo entry (repeatable)")
    parser.add_argument("--batch-sizes", default="1,16", help="comma-separated")
    parser.add_argument("--quick", action="store_true", help="fewer rounds, no mnist-cnn part")
    parser.add_argument(
        "--timing",
        choices=("isolated", "in-process"),
        default="isolated",
        help="time each variant in its own process (default) or all in this one",
    )
    parser.add_argument(
        "--instances",
        type=int,
        default=3,
        help="worker processes per variant with --timing isolated (samples pooled)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="timings per batch size; each repeat after the first re-times fp32 eager, "
        "torchslim and the two fastest INT8 peers of the first in fresh worker processes, and "
        "the summary reports the torchslim/fastest-peer ratio of every timing",
    )
    parser.add_argument("--calibration-batches", type=int, default=8, help="of 32 images")
    parser.add_argument("--note", default="", help="recorded in the JSON (e.g. machine load)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument(
        "--formats-only",
        action="store_true",
        help="only the bf16/fp16/fp8 checks; writes quantize_formats.json",
    )
    return parser.parse_args()


# ---------------------------------------------------------------- peers, each with its defaults


def ort_fp32(model: nn.Module, calibration: list[Any], workdir: Path) -> Variant:
    path = workdir / "fp32.onnx"
    exporter = export_onnx(model, calibration[0], path)
    runner = OnnxRuntimeRunner(path, THREADS)
    info = {"exporter": exporter}
    return Variant(RuntimeModule(runner), path.stat().st_size, info, _spec(ort_worker, path=path))


def ort_quantize_static(calibration: list[Any], workdir: Path, activation: str) -> Variant:
    """onnxruntime.quantization.quantize_static as its docs show: pre-process, QDQ, defaults
    (per-tensor weights, MinMax calibration), the activation type asked for."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared, out = workdir / "pre.onnx", workdir / f"ort-{activation}.onnx"
    quant_pre_process(str(workdir / "fp32.onnx"), str(prepared))
    feeds = [dict(zip(input_names(len(b)), to_numpy(b), strict=True)) for b in calibration]

    class Reader:
        def __init__(self) -> None:
            self.batches = iter(feeds)

        def get_next(self) -> Any:
            return next(self.batches, None)

    kind = QuantType.QUInt8 if activation == "u8s8" else QuantType.QInt8
    quantize_static(
        str(prepared),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=kind,
        weight_type=QuantType.QInt8,
    )
    runner = OnnxRuntimeRunner(out, THREADS)
    settings = {"format": "QDQ", "per_channel": False, "calibration": "MinMax"}
    return Variant(RuntimeModule(runner), out.stat().st_size, settings, _spec(ort_worker, path=out))


def openvino_nncf(model: nn.Module, calibration: list[Any], workdir: Path) -> Variant:
    """OpenVINO's documented PTQ flow: convert_model, nncf.quantize, compile for CPU."""
    import nncf
    import openvino as ov

    example = calibration[0]
    # the input shape with a dynamic batch; a fully dynamic [?,?,?,?] input fails to compile
    # on this CPU with the default (bf16) inference precision: "No suitable implementations"
    shapes = [(-1, *x.shape[1:]) for x in example]
    ov_model = ov.convert_model(copy.deepcopy(model).eval(), example_input=example, input=shapes)
    dataset = nncf.Dataset([b[0].numpy() for b in calibration])
    quantized = nncf.quantize(ov_model, dataset, subset_size=len(calibration))
    xml = workdir / "openvino-nncf.xml"
    ov.save_model(quantized, str(xml))
    core = ov.Core()
    compiled = core.compile_model(str(xml), "CPU", {"INFERENCE_NUM_THREADS": THREADS})
    request = compiled.create_infer_request()

    def run(*inputs: torch.Tensor) -> torch.Tensor:
        result = request.infer(dict(enumerate(to_numpy(inputs))))
        return torch.from_numpy(result[0].copy())

    size = xml.stat().st_size + xml.with_suffix(".bin").stat().st_size
    info = {"openvino": ov.__version__, "nncf": nncf.__version__}
    return Variant(RuntimeModule(run), size, info, _spec(openvino_worker, xml=xml))


def torch_pt2e(model: nn.Module, calibration: list[Any]) -> Variant:
    """torchao PT2E: export, X86InductorQuantizer defaults, calibrate, convert, torch.compile."""
    from torchslim.deploy.torch_backend import (
        TorchInductorRunner,
        _constant_bytes,
        quantize_pt2e,
    )

    converted = quantize_pt2e(model, calibration)
    note = (
        "no file form; size = bytes of the converted graph's int8/fp32 constants. The "
        "shared-nn.ReLU workaround of torchslim.deploy.torch_backend is applied (without "
        "it X86InductorQuantizer fails on these ResNets)"
    )
    runner = TorchInductorRunner(converted)
    return Variant(RuntimeModule(runner), _constant_bytes(converted), {"note": note})


def _spec(factory: Callable[..., Any], **kwargs: Any) -> WorkerVariant:
    """``quantize_peers:<factory>`` with its kwargs (paths as strings); the inputs come later."""
    values = {k: str(v) if isinstance(v, Path) else v for k, v in kwargs.items()}
    return WorkerVariant(f"quantize_peers:{factory.__name__}", values)


def build_peers(
    model: nn.Module, calibration: list[Any], workdir: Path, skipped: dict[str, str]
) -> dict[str, Variant]:
    """Every peer that builds here; the others go to ``skipped`` with the reason."""
    builders: dict[str, Callable[[], Variant]] = {
        "onnxruntime-fp32": lambda: ort_fp32(model, calibration, workdir),
        "onnxruntime-qdq-u8s8": lambda: ort_quantize_static(calibration, workdir, "u8s8"),
        "onnxruntime-qdq-s8s8": lambda: ort_quantize_static(calibration, workdir, "s8s8"),
        "openvino-nncf-int8": lambda: openvino_nncf(model, calibration, workdir),
        "torch-pt2e-x86-inductor": lambda: torch_pt2e(model, calibration),
    }
    needs = {"openvino-nncf-int8": "openvino", "torch-pt2e-x86-inductor": "torch"}
    peers: dict[str, Variant] = {}
    for name, build in builders.items():
        backend = needs.get(name)
        if backend and missing_module(backend):
            skipped[name] = f"not installed: {missing_module(backend)}"
            continue
        try:
            start = time.perf_counter()
            peers[name] = build()
            peers[name].info["build_s"] = round(time.perf_counter() - start, 2)
        except Exception as error:  # a peer that fails is reported, the run goes on
            skipped[name] = f"{type(error).__name__}: {str(error)[:300]}"
    return peers


# ---------------------------------------------------------------- measurement


def deployed_variant(
    model: nn.Module, calibration: list[Any], batch_size: int, workdir: Path
) -> Variant:
    config = DeployConfig(batch_size=batch_size, threads=THREADS)
    start = time.perf_counter()
    deployed = deploy(model, calibration, config)
    info = {
        "chosen": deployed.candidate,
        "decision": deployed.decision,
        "fp32_ops": deployed.fp32_ops,
        "build_s": round(time.perf_counter() - start, 2),
    }
    directory = deployed.save(workdir / f"torchslim-b{batch_size}")
    worker = _spec(deployed_worker, directory=directory)
    return Variant(deployed, deployed.saved_size_bytes(), info, worker)


def ptq_seconds(entry: Any, model: nn.Module) -> dict[str, Any]:
    """Wall time of deploy(backend="onnxruntime") with 512 calibration images (16 x 32)."""
    start = time.perf_counter()
    deployed = deploy(model, entry.calibration_batches(16), DeployConfig(backend="onnxruntime"))
    return {"seconds": time.perf_counter() - start, "images": 512, "chosen": deployed.candidate}


def accuracy_of(entry: Any, variants: dict[str, Variant]) -> dict[str, float | str]:
    accuracies: dict[str, float | str] = {}
    with torch.inference_mode():
        for name, variant in variants.items():
            try:
                accuracies[name] = entry.evaluate(variant.module)["accuracy"]
            except Exception as error:  # reported per variant
                accuracies[name] = f"failed: {type(error).__name__}: {str(error)[:200]}"
    return accuracies


def time_batch(
    variants: dict[str, Variant], inputs: tuple[torch.Tensor, ...], args: argparse.Namespace
) -> dict[str, Any]:
    """Medians of every variant at one batch size: each in its own worker process (default;
    what a user running one model sees) or all in this process (``--timing in-process``)."""
    config = BenchmarkConfig(warmup=5, rounds=args.rounds, threads=THREADS, max_seconds=20.0)
    if args.timing == "in-process":
        calls = {name: (lambda m=v.module: m(*inputs)) for name, v in variants.items()}
        return {"timing": "in-process", **compare(calls, BASELINE, config).to_dict()}
    workers = {name: v.worker for name, v in variants.items() if v.worker is not None}
    isolation = Isolation(instances=args.instances)
    result = compare_on_inputs(workers, inputs, BASELINE, config, isolation)
    where = f"isolated ({args.instances} worker processes per variant, samples pooled)"
    return {"timing": where, **result.to_dict()}


def int8_peers(names: Any) -> list[str]:
    """The INT8 peers among variant ``names`` (not fp32, not torchslim)."""
    peers = [n for n in names if n not in (BASELINE, "onnxruntime-fp32")]
    return [n for n in peers if not n.startswith("torchslim")]


def timing_ratio(medians: dict[str, float], batch: int | str) -> dict[str, Any]:
    """torchslim's median against the fastest INT8 peer's in one timing."""
    ours = medians[f"torchslim-deploy-auto-b{batch}"]
    fastest = min(int8_peers(medians), key=medians.__getitem__)
    return {"fastest_peer": fastest, "torchslim_vs_fastest_peer": medians[fastest] / ours}


def repeat_timing(
    timed: dict[str, Variant],
    first: dict[str, Any],
    batch: int,
    entry: Any,
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    """The first timing's ratio, then ``args.repeats - 1`` more, each in fresh workers.

    One timing's order of near-equal variants is decided by process luck and machine drift
    (5-45 % between runs on this VM, the size of the gaps at batch 1), so one ratio proves
    little; the spread over repeats says how often torchslim is ahead. A repeat times fp32
    eager, torchslim and the two fastest INT8 peers of the first timing (fewer workers to
    start than the whole set).
    """
    medians = {n: v["median_ms"] for n, v in first["variants"].items()}
    rows = [{"timing": 0, **timing_ratio(medians, batch)}]
    peers = sorted(int8_peers(medians), key=medians.__getitem__)[:2]
    chosen = {BASELINE, f"torchslim-deploy-auto-b{batch}", *peers}
    for index in range(1, args.repeats):
        again = time_batch(
            {n: v for n, v in timed.items() if n in chosen}, entry.example_inputs(batch), args
        )
        medians = {n: v["median_ms"] for n, v in again["variants"].items()}
        rows.append({"timing": index, **timing_ratio(medians, batch), "medians_ms": medians})
        print(f"  repeat {index}: {rows[-1]['torchslim_vs_fastest_peer']:.3f}x", flush=True)
    return rows


def summarize(
    per_batch: dict[str, Any],
    accuracy: dict[str, Any],
    sizes: dict[str, int],
    repeats: dict[str, list[dict[str, Any]]],
) -> dict[str, Any]:
    """For each batch size: fastest INT8 peer vs torchslim, and the issue's three targets."""
    summary: dict[str, Any] = {}
    fp32_accuracy = float(accuracy[BASELINE])
    for batch, result in per_batch.items():
        medians = {n: v["median_ms"] for n, v in result["variants"].items()}
        ours = f"torchslim-deploy-auto-b{batch}"
        fastest_peer = timing_ratio(medians, batch)["fastest_peer"]
        drop = fp32_accuracy - float(accuracy[ours]) if ours in accuracy else None
        summary[batch] = {
            "torchslim_median_ms": medians[ours],
            "fastest_peer": fastest_peer,
            "fastest_peer_median_ms": medians[fastest_peer],
            "torchslim_vs_fastest_peer": medians[fastest_peer] / medians[ours],
            "torchslim_speedup_vs_fp32_eager": medians[BASELINE] / medians[ours],
            "accuracy_drop_pt": None if drop is None else 100 * drop,
            "size_ratio_fp32_over_int8": sizes[BASELINE] / sizes[ours],
            "target_latency_met": medians[ours] <= medians[fastest_peer],
            "target_accuracy_met": drop is not None and 100 * drop <= 0.3,
            "target_size_met": sizes[BASELINE] / sizes[ours] >= 3.5,
        }
        ratios = [row["torchslim_vs_fastest_peer"] for row in repeats.get(batch, [])]
        if len(ratios) > 1:
            summary[batch]["over_timings"] = {
                "timings": len(ratios),
                "ratio_median": statistics.median(ratios),
                "ratio_min": min(ratios),
                "ratio_max": max(ratios),
                "torchslim_at_least_as_fast": sum(r >= 1 for r in ratios),
            }
    return summary


def run_model(name: str, args: argparse.Namespace, console: Console) -> dict[str, Any]:
    entry = torchslim.zoo.get(name)
    model = entry.load()
    calibration = entry.calibration_batches(args.calibration_batches)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        eager = _spec(eager_worker, model_name=name)
        variants = {BASELINE: Variant(model, saved_size_bytes(model), {}, eager)}
        variants |= build_peers(model, calibration, Path(tmp), skipped)
        if "torch-pt2e-x86-inductor" in variants:
            variants["torch-pt2e-x86-inductor"].worker = _spec(
                pt2e_worker, model_name=name, calibration_batches=args.calibration_batches
            )
        for batch in batch_sizes:
            console.print(f"{name}: deploy(auto) at batch {batch} ...")
            variants[f"torchslim-deploy-auto-b{batch}"] = deployed_variant(
                model, calibration, batch, Path(tmp)
            )
        console.print(f"{name}: accuracy of {len(variants)} variants ...")
        accuracy = accuracy_of(entry, variants)
        per_batch: dict[str, Any] = {}
        repeats: dict[str, list[dict[str, float]]] = {}
        for batch in batch_sizes:
            timed = {
                n: v
                for n, v in variants.items()
                if not n.startswith("torchslim") or n.endswith(f"-b{batch}")
            }
            per_batch[str(batch)] = time_batch(timed, entry.example_inputs(batch), args)
            _print_batch(console, name, batch, per_batch[str(batch)], accuracy)
            repeats[str(batch)] = repeat_timing(timed, per_batch[str(batch)], batch, entry, args)
    sizes = {n: v.size_bytes for n, v in variants.items()}
    return {
        "accuracy": accuracy,
        "size_bytes": sizes,
        "info": {n: v.info for n, v in variants.items()},
        "skipped": skipped,
        "latency": per_batch,
        "summary": summarize(per_batch, accuracy, sizes, repeats),
        "repeats": repeats,
        "ptq_512_images_onnxruntime": ptq_seconds(entry, model),
    }


def _print_batch(
    console: Console, name: str, batch: int, result: dict[str, Any], accuracy: dict[str, Any]
) -> None:
    console.print(f"[bold]{name}, batch {batch}, {THREADS} threads[/bold]")
    for variant, figures in result["variants"].items():
        acc = accuracy.get(variant)
        acc_text = f"{100 * acc:6.2f} %" if isinstance(acc, float) else str(acc)
        console.print(
            f"  {variant:32s} median {figures['median_ms']:8.3f} ms  p90 "
            f"{figures['p90_ms']:8.3f} ms  x{figures['speedup_vs_baseline']:5.2f}  acc {acc_text}"
        )


def run_mnist(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    """Accuracy of each INT8 peer and of deploy(auto) on the 5 000 real digits (mnist-cnn)."""
    entry = torchslim.zoo.get("mnist-cnn")
    model = entry.load()
    calibration = entry.calibration_batches(args.calibration_batches)
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        variants = {BASELINE: Variant(model, saved_size_bytes(model))}
        variants |= build_peers(model, calibration, Path(tmp), skipped)
        variants["torchslim-deploy-auto-b16"] = deployed_variant(model, calibration, 16, Path(tmp))
        accuracy = accuracy_of(entry, variants)
    for name, value in accuracy.items():
        console.print(f"  mnist-cnn {name:32s} {value}")
    chosen = variants["torchslim-deploy-auto-b16"].info["chosen"]
    return {
        "accuracy": accuracy,
        "skipped": skipped,
        "torchslim_chosen": chosen,
        "size_bytes": {n: v.size_bytes for n, v in variants.items()},
    }


FORMAT_EVAL_IMAGES = 2000  # the first test images: emulated fp16 on 10 000 takes too long here


def _subset_accuracy(entry: Any, model: nn.Module) -> float:
    from torchslim.zoo.vision import accuracy

    images, labels = entry.example_inputs(FORMAT_EVAL_IMAGES)[0], entry._eval_data()[1]
    return accuracy(model, images, labels[:FORMAT_EVAL_IMAGES])


def run_formats(name: str, batch_sizes: list[int], rounds: int) -> dict[str, Any]:
    """bf16 and fp16 timed against fp32 (interleaved) at each batch size, with accuracy on the
    first 2 000 eval images; fp8 (e4m3, e5m2): size and accuracy of fp8-rounded weights only."""
    from torchslim.deploy import CastModel, check_format
    from torchslim.deploy.formats import FORMATS, _fp8_weights

    entry = torchslim.zoo.get(name)
    model = entry.load()
    report: dict[str, Any] = {
        "eval_images": FORMAT_EVAL_IMAGES,
        "fp32_accuracy": _subset_accuracy(entry, model),
    }
    for fmt in ("bfloat16", "float16", "float8_e4m3fn", "float8_e5m2"):
        fp8 = fmt.startswith("float8")
        checks = {
            str(b): check_format(model, entry.example_inputs(b), fmt, "warn", THREADS, rounds)
            for b in (batch_sizes[-1:] if fp8 else batch_sizes)
        }
        runnable = _fp8_weights(model, FORMATS[fmt]) if fp8 else CastModel(model, FORMATS[fmt])
        accuracy = _subset_accuracy(entry, runnable)
        report[fmt] = {"accuracy": accuracy, "checks": {b: c.to_dict() for b, c in checks.items()}}
    return report


def run_bf16_deployed(name: str, batch_sizes: list[int], args: argparse.Namespace) -> Any:
    """bf16 that really runs in bf16: torchslim ``deploy(precision="bf16")`` (OpenVINO bf16
    kernels) against torch fp32 eager (baseline), torch bf16 eager, OpenVINO forced to f32 and
    OpenVINO with the plugin's default precision, each in its own worker processes; accuracy of
    the deployed model on the first 2 000 eval images. None where the CPU has no bf16 compute
    (deploy refuses; the cast checks above give the measured cost)."""
    import openvino as ov

    from torchslim.deploy import DeployError

    entry = torchslim.zoo.get(name)
    model = entry.load()
    calibration = entry.calibration_batches(2)  # only checks agreement; bf16 needs no ranges
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "fp32.xml"  # OpenVINO's documented conversion, its default save
        ov.save_model(
            ov.convert_model(copy.deepcopy(model).eval(), example_input=calibration[0]), str(xml)
        )
        for batch in batch_sizes:
            config = DeployConfig(precision="bf16", batch_size=batch, threads=THREADS)
            try:
                deployed = deploy(model, calibration, config)
            except DeployError as error:
                return {"refused": str(error)}
            directory = deployed.save(Path(tmp) / f"bf16-b{batch}")
            workers = {
                BASELINE: _spec(eager_worker, model_name=name),
                "torch-bf16-eager": _spec(cast_worker, model_name=name, dtype="bfloat16"),
                "openvino-f32": _spec(openvino_worker, xml=xml, precision="f32"),
                "openvino-default-precision": _spec(openvino_worker, xml=xml),
                f"torchslim-deploy-bf16-b{batch}": _spec(deployed_worker, directory=directory),
            }
            bench = BenchmarkConfig(warmup=5, rounds=args.rounds, threads=THREADS, max_seconds=20.0)
            isolation = Isolation(instances=args.instances)
            timing = compare_on_inputs(
                workers, entry.example_inputs(batch), BASELINE, bench, isolation
            )
            report[str(batch)] = {
                "chosen": deployed.candidate,
                "decision_reason": deployed.decision["reason"],
                "accuracy": _subset_accuracy(entry, deployed),
                "size_bytes": deployed.saved_size_bytes(),
                "fp32_size_bytes": saved_size_bytes(model),
                **timing.to_dict(),
            }
    return report


def main_formats(args: argparse.Namespace, console: Console) -> None:
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    models = args.model or ["fashion-resnet20", "fashion-resnet56"]
    load_before = os.getloadavg()
    results = {name: run_formats(name, batch_sizes, args.rounds) for name in models}
    for name in models:
        results[name]["bfloat16_deployed"] = run_bf16_deployed(name, batch_sizes, args)
    for name, report in results.items():
        for fmt, figures in report.items():
            if fmt == "bfloat16_deployed" and "refused" in figures:
                console.print(f"{name} bf16 deployed: {figures['refused']}")
            elif fmt == "bfloat16_deployed":
                for batch, row in figures.items():
                    medians = {n: round(v["median_ms"], 3) for n, v in row["variants"].items()}
                    console.print(f"{name} bf16 deployed b{batch}: {medians}")
            elif isinstance(figures, dict):
                messages = [c["message"] for c in figures["checks"].values()]
                console.print(f"{name} {fmt}: accuracy {figures['accuracy']:.4f}; {messages}")
            else:
                console.print(f"{name} {fmt}: {figures}")
    payload = {
        "benchmark": "quantize_formats",
        "timestamp_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/quantize_peers.py " + " ".join(sys.argv[1:]),
        "note": args.note,
        "load_average_1_5_15": {"before": load_before, "after": os.getloadavg()},
        "machine": machine_facts(),
        "models": results,
    }
    console.print(f"wrote {write_result_json('quantize_formats', payload, args.out_dir)}")


def main() -> None:
    args = parse_args()
    args.rounds = 10 if args.quick else 30
    console = Console(width=140)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(THREADS)
    if args.formats_only:
        main_formats(args, console)
        return
    load_before = os.getloadavg()
    models = args.model or ["fashion-resnet20", "fashion-resnet56"]
    results = {name: run_model(name, args, console) for name in models}
    mnist = None if args.quick else run_mnist(args, console)
    payload = {
        "benchmark": "quantize_peers",
        "timestamp_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/quantize_peers.py " + " ".join(sys.argv[1:]),
        "note": args.note,
        "load_average_1_5_15": {"before": load_before, "after": os.getloadavg()},
        "threads": THREADS,
        "machine": machine_facts(),
        "models": results,
        "mnist_cnn": mnist,
    }
    path = write_result_json("quantize_peers", payload, args.out_dir)
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()

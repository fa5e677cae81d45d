"""Building the int8 candidates of a text encoder from one fp32 ONNX export, each a runner on
torch tensors plus the files that make up its artifact. A candidate that fails to build is
reported with its reason; the others still compete."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from torchslim._machine import cpu_features, int8_products_saturate
from torchslim.deploy import text_onnx, text_openvino
from torchslim.deploy.config import DeployError
from torchslim.deploy.text_config import TextDeployConfig
from torchslim.deploy.text_onnx import OnnxRuntimeTextRunner
from torchslim.deploy.text_openvino import Feeds, OpenVinoTextRunner
from torchslim.deploy.text_torch import TorchInt8TextRunner, build_torch_int8, load_torch_int8

TextRunner = OnnxRuntimeTextRunner | OpenVinoTextRunner | TorchInt8TextRunner


@dataclass
class TextCandidate:
    """One built way of running the int8 model.

    Attributes:
        name: e.g. ``"openvino-nncf-bf16"``.
        runner: callable on torch tensors (the model's positional inputs).
        files: artifact file name -> its path in the build directory.
        build: how it was built (exporter, fusions, quantizer and its options).
    """

    name: str
    runner: TextRunner
    files: dict[str, Path]
    build: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BuildContext:
    """What every candidate builder needs: the fp32 export and the model's facts."""

    fp32_onnx: Path
    names: list[str]
    heads: int
    hidden: int
    calibration: Feeds
    workdir: Path
    config: TextDeployConfig
    exporter: str
    model: nn.Module | None = None  # the fp32 torch model (torch candidates start from it)


def _onnxruntime(context: BuildContext, fusion: str, name: str) -> TextCandidate:
    """``fusion``: "none", "all" or "no-attention" (see :func:`text_onnx.fuse_transformer`)."""
    source = context.fp32_onnx
    build: dict[str, Any] = {"exporter": context.exporter, "fusion": fusion}
    if fusion != "none":
        source = context.workdir / f"{name}.fp32.onnx"
        build["fusions"] = text_onnx.fuse_transformer(
            context.fp32_onnx, source, (context.heads, context.hidden), fusion == "all"
        )
    target = context.workdir / f"{name}.onnx"
    saturate = int8_products_saturate(cpu_features())  # x86 without VNNI: 7-bit weights
    text_onnx.quantize_dynamic_int8(source, target, context.config.per_channel, saturate)
    build |= {
        "weight_bits": 7 if saturate else 8,
        "quantizer": "onnxruntime.quantize_dynamic",
        "weights": "int8 " + ("per-channel" if context.config.per_channel else "per-tensor"),
        "activations": "uint8, dynamic per-tensor (U8S8)",
    }
    runner = OnnxRuntimeTextRunner(target, context.names, context.config.threads)
    return TextCandidate(name, runner, {"model.onnx": target}, build)


_NNCF_CACHE = "nncf.xml"  # every OpenVINO candidate runs the same quantized IR


def _openvino(context: BuildContext, precision: str, streams: int, name: str) -> TextCandidate:
    xml = context.workdir / _NNCF_CACHE
    build_file = context.workdir / "nncf.build"
    if not xml.is_file():
        info = text_openvino.nncf_quantize_text(context.fp32_onnx, context.calibration, xml)
        build_file.write_text(json.dumps(info))
    build = {
        "exporter": context.exporter,
        "quantizer": "nncf.quantize (OpenVINO backend, ModelType.TRANSFORMER)",
        "calibration_batches": len(context.calibration),
        "weights": "int8 per-channel",
        "activations": "int8/uint8 static per-tensor (SmoothQuant + bias correction)",
        **json.loads(build_file.read_text()),
    }
    threads = context.config.threads
    if streams > threads:
        raise DeployError(f"{streams} streams need at least {streams} threads, got {threads}")
    static = name.endswith("-static")
    runner = OpenVinoTextRunner(xml, context.names, threads, precision, streams, static)
    files = {"model.xml": xml, "model.bin": xml.with_suffix(".bin")}
    return TextCandidate(name, runner, files, build)


def _torch_int8(context: BuildContext, name: str) -> TextCandidate:
    if context.model is None:
        raise DeployError("torch-int-mm needs the fp32 torch model in BuildContext.model")
    runner = build_torch_int8(context.model, context.workdir, context.config.threads)
    files = {"model.safetensors": context.workdir / "model.safetensors"}
    files["architecture.json"] = context.workdir / "architecture.json"
    build = {
        "quantizer": "torchslim.deploy.torch_int8.to_int8_mm (every nn.Linear)",
        "weights": "int8 per-channel",
        "activations": "int8 symmetric, dynamic per token",
        "kernel": "torch._int_mm",
    }
    return TextCandidate(name, runner, files, build)


BUILDERS: dict[str, Callable[[BuildContext, str], TextCandidate]] = {
    "onnxruntime-fused-dynamic": lambda c, n: _onnxruntime(c, "all", n),
    "onnxruntime-fused-noattention-dynamic": lambda c, n: _onnxruntime(c, "no-attention", n),
    "onnxruntime-dynamic": lambda c, n: _onnxruntime(c, "none", n),
    "openvino-nncf-bf16": lambda c, n: _openvino(c, "bf16", 1, n),
    "openvino-nncf-f32": lambda c, n: _openvino(c, "f32", 1, n),
    "openvino-nncf-bf16-2streams": lambda c, n: _openvino(c, "bf16", 2, n),
    "openvino-nncf-bf16-static": lambda c, n: _openvino(c, "bf16", 1, n),
    "openvino-nncf-f32-static": lambda c, n: _openvino(c, "f32", 1, n),
    "torch-int-mm": _torch_int8,
}


def build_candidates(
    context: BuildContext, names: list[str]
) -> tuple[list[TextCandidate], dict[str, str]]:
    """Every named candidate that builds; the others by name with the reason."""
    built: list[TextCandidate] = []
    failed: dict[str, str] = {}
    for name in names:
        try:
            built.append(BUILDERS[name](context, name))
        except Exception as error:  # a failing candidate is reported, not fatal
            failed[name] = f"{type(error).__name__}: {str(error).strip()[:300]}"
    return built, failed


def load_runner(
    candidate: str, directory: Path, names: list[str], settings: dict[str, Any], threads: int
) -> TextRunner:
    """Rebuild the runner of a saved candidate from its files (ONNX, OpenVINO IR, or
    safetensors + JSON for torch)."""
    if candidate.startswith("onnxruntime"):
        return OnnxRuntimeTextRunner(directory / "model.onnx", names, threads)
    if candidate.startswith("openvino"):
        precision = str(settings.get("inference_precision", "f32"))
        streams = min(int(settings.get("streams", 1)), threads)
        static = bool(settings.get("static_shapes", False))
        xml = directory / "model.xml"
        return OpenVinoTextRunner(xml, names, threads, precision, streams, static)
    if candidate.startswith("torch"):
        return load_torch_int8(directory, settings, threads)
    raise DeployError(f"unknown text deployment candidate {candidate!r} in {directory}")

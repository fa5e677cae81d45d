"""ONNX Runtime backend: static QDQ quantization (U8S8 / S8S8, per-channel weights) of the
exported graph with our calibration batches, run by a CPU session with fixed threads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from torchslim.deploy._onnx import WEIGHTED_OPS, compact, fp32_ops
from torchslim.deploy._runtime import Candidate, Feeds, require, saved_file, to_numpy
from torchslim.deploy.config import DeployConfig

ACTIVATION_LABELS = {"uint8": "u8s8", "int8": "s8s8"}
# The settings that describe the quantized graph itself (the rest configure the session).
GRAPH_SETTINGS = (
    "format",
    "activation_type",
    "weight_type",
    "weight_bits",
    "per_channel",
    "calibration_method",
)


class OnnxRuntimeRunner:
    """An ONNX Runtime CPU session on one file: ``intra_op_num_threads`` fixed, spinning off
    (spinning workers would steal the cores of whatever runs next), all graph optimisations."""

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [arg.name for arg in self.session.get_inputs()]

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        feeds = dict(zip(self.input_names, to_numpy(inputs), strict=True))
        return torch.from_numpy(self.session.run(None, feeds)[0])


class _Reader:
    """onnxruntime's CalibrationDataReader over our feeds (a fresh iterator per pass)."""

    def __init__(self, feeds: Feeds) -> None:
        self.feeds = feeds
        self._iter = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = iter(self.feeds)


def prepare(fp32_path: Path, out: Path) -> Path:
    """ONNX Runtime's quantization pre-processing (shape inference, graph clean-up), once."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(fp32_path), str(out), skip_symbolic_shape=True)
    return out


def quantize_qdq(
    prepared: Path,
    feeds: Feeds,
    scheme: tuple[str, bool],
    config: DeployConfig,
    out: Path,
    excluded: tuple[str, ...] = (),
) -> None:
    """``onnxruntime.quantization.quantize_static`` of the pre-processed graph in QDQ format,
    int8 weights, into ``out``; ``scheme`` is (activation type, per-channel weights);
    ``excluded``: node names left in floating point (``DeployConfig.ignore``'s layers).

    Where the CPU's int8 kernels saturate (x86 without VNNI: :func:`weight_bits` is 7) the
    weights are quantized in reduced range, as ONNX Runtime recommends there.
    """
    activation_type, per_channel = scheme
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    reader = _Reader(feeds)
    op_types, attention = _attention_exclusions(prepared)
    quantize_static(
        str(prepared),
        str(out),
        reader,
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8 if activation_type == "uint8" else QuantType.QInt8,
        weight_type=QuantType.QInt8,
        per_channel=per_channel,
        reduce_range=weight_bits(config) == 7,
        nodes_to_exclude=[*excluded, *attention] or None,
        op_types_to_quantize=op_types,
        calibrate_method=methods[config.calibration_method],
        extra_options={"ActivationSymmetric": activation_type == "int8"},
    )


def _attention_exclusions(path: Path) -> tuple[list[str] | None, list[str]]:
    """(op types to quantize, nodes left in fp32) for graphs with attention.

    A MatMul of two activations (Q·Kᵀ, scores·V) marks attention: there only the layers with
    weights are quantized, and those MatMuls stay fp32. Elementwise ops then keep fp32 too, so
    the additive mask (-3.4e38 where masked) never lands on an int8 grid that it would
    flatten. Graphs without such a MatMul (CNNs) are quantized whole, as before.
    """
    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {t.name for t in graph.initializer}
    attention = [
        node.name
        for node in graph.node
        if node.op_type == "MatMul" and not any(name in weights for name in node.input)
    ]
    return (list(WEIGHTED_OPS), attention) if attention else (None, [])


def weight_bits(config: DeployConfig) -> int:
    """8, or 7 (reduced range) on a CPU whose int8 products saturate (x86 without VNNI)."""
    from torchslim._machine import int8_products_saturate

    return 7 if int8_products_saturate(config.features()) else 8


def schemes(config: DeployConfig) -> list[tuple[str, bool]]:
    """(activation type, per-channel) pairs to build; per-channel first for each activation."""
    auto = config.activation_type == "auto"
    activations = ("uint8", "int8") if auto else (config.activation_type,)
    granularity = {"auto": (True, False), "channel": (True,), "tensor": (False,)}
    return [(a, c) for a in activations for c in granularity[config.weight_granularity]]


def candidate_name(scheme: tuple[str, bool]) -> str:
    activation, per_channel = scheme
    return f"onnxruntime-{ACTIVATION_LABELS[activation]}" + ("" if per_channel else "-per-tensor")


def build(
    fp32_path: Path,
    feeds: Feeds,
    config: DeployConfig,
    workdir: Path,
    excluded: tuple[str, ...] = (),
) -> tuple[list[Candidate], dict[str, str]]:
    """One candidate per (activation type, weight granularity) and thread count
    (:meth:`DeployConfig.thread_options`), ``excluded`` nodes left in floating point; the
    failed ones, with why."""
    require("onnxruntime")
    candidates: list[Candidate] = []
    failed: dict[str, str] = {}
    try:
        prepared = prepare(fp32_path, workdir / "fp32.prepared.onnx")
    except Exception as error:  # shape inference can fail on exotic graphs: quantize as is
        failed["onnxruntime-pre-processing"] = f"{type(error).__name__}: {str(error)[:300]}"
        prepared = fp32_path
    for scheme in schemes(config):
        name = candidate_name(scheme)
        qdq = workdir / f"{name}.qdq.onnx"
        try:
            quantize_qdq(prepared, feeds, scheme, config, qdq, excluded)
            path = workdir / f"{name}.onnx"
            compact(qdq, path)
            listed = fp32_ops(onnx.load(str(qdq)))
            for threads in config.thread_options():
                runner = OnnxRuntimeRunner(path, threads)
                label = name + ("-1thread" if threads < config.threads else "")
                settings = settings_for(scheme, config, threads)
                files = {"model.onnx": path}
                candidates.append(Candidate(label, "onnxruntime", runner, settings, files, listed))
        except Exception as error:  # a failing variant is reported; the others still compete
            failed[name] = f"{type(error).__name__}: {str(error).strip()[:300]}"
    return candidates, failed


def settings_for(scheme: tuple[str, bool], config: DeployConfig, threads: int) -> dict[str, Any]:
    """The manifest settings of one scheme's session with ``threads`` intra-op threads."""
    activation, per_channel = scheme
    return {
        "engine": "onnxruntime",
        "format": "QDQ",
        "activation_type": activation,
        "weight_type": "int8",
        "weight_bits": weight_bits(config),
        "per_channel": per_channel,
        "calibration_method": config.calibration_method,
        "graph_optimization": "ORT_ENABLE_ALL",
        "intra_op_threads": threads,
        "spinning": False,
    }


def load(directory: Path, settings: dict[str, Any], threads: int) -> OnnxRuntimeRunner:
    path = saved_file(directory, "model.onnx", "onnxruntime", "an ONNX Runtime")
    return OnnxRuntimeRunner(path, threads)

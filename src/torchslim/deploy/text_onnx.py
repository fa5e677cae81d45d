"""ONNX side of text-encoder deployment: export with dynamic batch and sequence axes, ONNX
Runtime's transformer fusions (Attention, SkipLayerNorm, BiasGelu, EmbedLayerNorm), dynamic
int8 quantization (U8S8: uint8 activations quantized at run time, int8 weights), the runner.

Dynamic quantization: Jacob et al., arXiv:1712.05877 (integer arithmetic-only inference).
"""

from __future__ import annotations

import copy
import inspect
import logging
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from torchslim.deploy._onnx import export_failure
from torchslim.deploy.config import DeployError

OPSET = 17
OUTPUT_NAME = "output"
# Ops that run in int8 (or quantize to it) in a dynamically quantized ONNX Runtime graph.
INT8_OPS = (
    "MatMulInteger",
    "DynamicQuantizeLinear",
    "DynamicQuantizeMatMul",
    "QEmbedLayerNormalization",
    "QGemm",
    "MatMulIntegerToFloat",
)
# Ops that only move, reshape, cast or index data: neither int8 nor fp32 compute.
BOOKKEEPING_OPS = (
    "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Shape", "Constant", "Cast",
    "Concat", "Slice", "Gather", "GatherElements", "Expand", "Range", "ConstantOfShape",
    "Equal", "Where", "And", "GreaterOrEqual", "Flatten", "DequantizeLinear",
)  # fmt: skip


def text_input_names(model: nn.Module, count: int) -> list[str]:
    """Names of the ``count`` positional inputs: the model's ``input_names`` attribute (the zoo's
    HuggingFaceOutput), else its forward's positional parameters, else ``input_<i>``."""
    declared = getattr(model, "input_names", None)
    if isinstance(declared, Sequence) and len(declared) == count:
        return [str(name) for name in declared]
    parameters = [
        p.name
        for p in inspect.signature(model.forward).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if len(parameters) >= count:
        return parameters[:count]
    return [f"input_{i}" for i in range(count)]


def eager_attention_copy(model: nn.Module) -> nn.Module:
    """A copy in eval mode whose transformers submodules use the "eager" attention: its
    MatMul/Softmax pattern is what ONNX Runtime's fusion recognises (SDPA is not fused)."""
    model = copy.deepcopy(model).eval()
    for module in model.modules():
        setter = getattr(module, "set_attn_implementation", None)
        if callable(setter):
            try:
                setter("eager")
            except (ValueError, AttributeError, TypeError):  # a model without the switch
                continue
    return model


def export_text_onnx(
    model: nn.Module, example: Sequence[torch.Tensor], names: list[str], path: Path
) -> str:
    """Export with dynamic (batch, sequence) axes; returns the exporter that worked.

    TorchScript first (its graph is the one ONNX Runtime's transformer fusions match), the
    torch.export-based exporter second. Both failing raises DeployError with both reasons.
    """
    exportable = eager_attention_copy(model)
    axes: dict[str, dict[int, str]] = {name: {0: "batch", 1: "sequence"} for name in names}
    axes[OUTPUT_NAME] = {0: "batch"}
    errors: dict[str, str] = {}
    for exporter, dynamo in (("torchscript", False), ("dynamo", True)):
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated
                torch.onnx.export(
                    exportable, tuple(example), str(path), dynamo=dynamo, input_names=names,
                    output_names=[OUTPUT_NAME], dynamic_axes=axes, opset_version=OPSET,
                    verbose=False,
                )  # fmt: skip
            return exporter
        except Exception as error:  # every exporter failure is reported, not only the last
            errors[exporter] = export_failure(error)
    raise DeployError(
        f"the text model could not be exported to ONNX: {errors}. deploy_text_int8 needs a "
        "model torch.onnx.export can trace with (batch, sequence) token inputs."
    )


def attention_shape(model: nn.Module) -> tuple[int, int]:
    """(num_attention_heads, hidden_size) from the first transformers config inside ``model``;
    (0, 0) lets ONNX Runtime's optimizer read them off the graph."""
    for module in model.modules():
        config = getattr(module, "config", None)
        heads = getattr(config, "num_attention_heads", None)
        hidden = getattr(config, "hidden_size", None)
        if isinstance(heads, int) and isinstance(hidden, int):
            return heads, hidden
    return 0, 0


def fuse_transformer(
    source: Path, target: Path, shape: tuple[int, int], attention: bool = True
) -> dict[str, int]:
    """ONNX Runtime's BERT fusions (opt level 1, portable: no hardware-specific layouts).

    ``shape`` is (num_heads, hidden_size). With ``attention=False`` only LayerNorm, SkipLayerNorm,
    BiasGelu and EmbedLayerNorm are fused: attention stays MatMul/Softmax, its Q/K/V projections
    then quantize as three MatMulIntegers instead of one QAttention. Returns the count of each
    fused op; raises DeployError when attention was asked for and none was fused.
    """
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    options = FusionOptions("bert")
    options.enable_attention = attention
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fused = optimizer.optimize_model(
            str(source), model_type="bert", num_heads=shape[0], hidden_size=shape[1],
            opt_level=1, optimization_options=options,
        )  # fmt: skip
    counts = {k: int(v) for k, v in fused.get_fused_operator_statistics().items() if v}
    if attention and not counts.get("Attention"):
        raise DeployError(f"ONNX Runtime fused no attention in {source.name}: {counts}")
    fused.save_model_to_file(str(target))
    return counts


def quantize_dynamic_int8(
    source: Path, target: Path, per_channel: bool, reduce_range: bool = False
) -> None:
    """Dynamic int8: int8 weights (per channel or per tensor), uint8 activations at run time.

    U8S8 is the pairing VNNI (``vpdpbusd``) multiplies natively; on AVX2 without VNNI it is
    also the fast one (S8S8 goes through a slower path there), but its VPMADDUBSW pair sums
    saturate int16 for full-range weights: ``reduce_range`` (7-bit weights) avoids that
    (:func:`torchslim._machine.int8_products_saturate` decides).
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Contrib ops of the fused graph (Attention, SkipLayerNorm) defeat ONNX shape inference;
    # the default type tells the quantizer their outputs are float.
    options = {"DefaultTensorType": onnx.TensorProto.FLOAT}
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # "consider pre-processing": advice for static QDQ graphs
    try:
        quantize_dynamic(
            str(source), str(target), weight_type=QuantType.QInt8, per_channel=per_channel,
            reduce_range=reduce_range, extra_options=options,
        )  # fmt: skip
    finally:
        logging.disable(previous)


class OnnxRuntimeTextRunner:
    """An ONNX Runtime CPU session called with torch tensors; returns the first output.

    Worker threads do not spin between calls: spinning steals the cores of whatever runs next.
    """

    backend = "onnxruntime"

    def __init__(self, path: Path, names: list[str], threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.path, self.names = path, list(names)
        expected = [arg.name for arg in self.session.get_inputs()]
        if expected != self.names:
            raise DeployError(f"{path.name} takes inputs {expected}, expected {self.names}")

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        feeds = {name: _array(x) for name, x in zip(self.names, inputs, strict=True)}
        return torch.from_numpy(self.session.run(None, feeds)[0])

    def fp32_ops(self) -> list[str]:
        """Compute nodes of the graph ONNX Runtime actually runs (after its own fusions, e.g.
        MatMulInteger + scale -> DynamicQuantizeMatMul) that stay in floating point; attention's
        inner matmuls and softmax stay fp32 inside QAttention, whose Q/K/V projection is int8."""
        import onnx
        import onnxruntime as ort

        with tempfile.TemporaryDirectory() as tmp:
            options = ort.SessionOptions()
            options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
            # the fusions that matter here; ENABLE_ALL adds CPU-layout rewrites and a warning
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
            ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
            graph = onnx.load(options.optimized_model_filepath, load_external_data=False).graph
        listed = []
        for node in graph.node:
            if node.op_type == "QAttention":
                listed.append(f"QAttention {node.name}: QK^T, softmax, attention x V")
            elif node.op_type not in INT8_OPS + BOOKKEEPING_OPS:
                listed.append(f"{node.op_type} {node.name}")
        return listed

    def settings(self) -> dict[str, Any]:
        return {"engine": "onnxruntime", "intra_op_threads": self.session_threads()}

    def session_threads(self) -> int:
        return int(self.session.get_session_options().intra_op_num_threads)


def _array(x: torch.Tensor) -> np.ndarray:
    """A contiguous numpy array of a CPU tensor, keeping integer dtypes (token ids are int64)."""
    return x.detach().to("cpu").contiguous().numpy()

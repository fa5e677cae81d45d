"""ONNX plumbing shared by the ONNX Runtime and OpenVINO backends: export, fp32-op listing,
compaction of names (so the artifact's size is its weights, not its strings)."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from pathlib import Path

import onnx
import torch
from torch import nn

from torchslim.deploy.config import DeployError

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
# Ops that only move or reshape data: they carry int8 through a QDQ graph untouched.
LAYOUT_OPS = ("Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Shape")
OPSET = 17


def input_names(count: int) -> list[str]:
    return [f"input_{i}" for i in range(count)]


def export_onnx(model: nn.Module, example: Sequence[torch.Tensor], path: Path) -> str:
    """Export ``model`` (a copy, in eval mode) with a dynamic batch axis; return the exporter.

    The TorchScript exporter is tried first (a plain, stable graph that ONNX Runtime's quantizer
    knows well); the torch.export-based one is the fallback. Both failing raises DeployError.
    """
    model = copy.deepcopy(model).eval()
    names = input_names(len(example))
    errors: dict[str, str] = {}
    for exporter in ("torchscript", "dynamo"):
        try:
            _export_with(exporter, model, tuple(example), names, path)
            onnx.checker.check_model(str(path))
            return exporter
        except Exception as error:  # every exporter failure is reported, not just the last
            errors[exporter] = f"{type(error).__name__}: {str(error).strip()[:300]}"
    raise DeployError(
        f"the model could not be exported to ONNX: {errors}. Deploy needs a model that "
        "torch.onnx.export can trace; try backend='torch' (PT2E) instead."
    )


def _export_with(
    exporter: str, model: nn.Module, example: tuple[torch.Tensor, ...], names: list[str], path: Path
) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated and says so
        if exporter == "torchscript":
            axes = {name: {0: "batch"} for name in [*names, "output_0"]}
            torch.onnx.export(
                model,
                example,
                str(path),
                dynamo=False,
                input_names=names,
                output_names=["output_0"],
                dynamic_axes=axes,
                opset_version=OPSET,
            )
        else:
            batch = torch.export.Dim("batch", min=1, max=4096)
            shapes = tuple({0: batch} for _ in names)
            program = torch.onnx.export(
                model,
                example,
                None,
                dynamo=True,
                input_names=names,
                output_names=["output_0"],
                dynamic_shapes=shapes,
                opset_version=18,
            )
            assert program is not None
            program.save(str(path))


def fp32_ops(model: onnx.ModelProto) -> list[str]:
    """Compute ops of a QDQ graph that run in fp32: an input not fed by DequantizeLinear.

    Layout ops (Reshape, Flatten, ...) are not compute and are left out; each entry is
    ``"<op_type> <node name>"``.
    """
    produced_by = {out: node for node in model.graph.node for out in node.output}
    constants = {init.name for init in model.graph.initializer}
    listed: list[str] = []
    for node in model.graph.node:
        if node.op_type in QDQ_OPS or node.op_type in LAYOUT_OPS:
            continue
        data_inputs = [name for name in node.input if name and name not in constants]
        quantized = all(
            name in produced_by and produced_by[name].op_type == "DequantizeLinear"
            for name in data_inputs
        )
        if not quantized or not data_inputs:
            listed.append(f"{node.op_type} {node.name}".strip())
    return listed


def compact(source: Path, target: Path) -> None:
    """Rewrite ``source`` to ``target`` with short tensor names, no node names, no doc strings
    and no shape annotations: the same graph, its file size close to the weights' bytes."""
    model = onnx.load(str(source))
    graph = model.graph
    keep = {v.name for v in [*graph.input, *graph.output]}
    renames: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        return renames.setdefault(name, f"t{len(renames)}")

    for init in graph.initializer:
        init.name = short(init.name)
        init.doc_string = ""
    for node in graph.node:
        node.input[:] = [short(n) for n in node.input]
        node.output[:] = [short(n) for n in node.output]
        node.name, node.doc_string = "", ""
    del graph.value_info[:]
    model.doc_string, graph.doc_string = "", ""
    onnx.save(model, str(target))

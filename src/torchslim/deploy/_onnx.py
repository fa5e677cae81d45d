"""ONNX plumbing shared by the ONNX Runtime and OpenVINO backends: export, fp32-op listing,
compaction of names (so the artifact's size is its weights, not its strings)."""

from __future__ import annotations

import copy
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import onnx
import torch
from torch import nn

from torchslim.deploy._runtime import batch_dynamic_shapes
from torchslim.deploy.config import DeployError

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
# Ops that only move or reshape data: they carry int8 through a QDQ graph untouched.
LAYOUT_OPS = ("Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Shape")
# Ops with weights that a quantizer turns into int8 kernels (what "ignore" must keep in fp32).
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
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
            errors[exporter] = export_failure(error)
    raise DeployError(
        f"the model could not be exported to ONNX: {errors}. Deploy needs a model that "
        "torch.onnx.export can trace; try backend='torch' (PT2E) instead."
    )


def export_failure(error: BaseException) -> str:
    """One exporter's failure in a line a user can read: the innermost cause (torch.export's
    own reason, not the wrapper's "step 1/3" advice), without terminal colour codes."""
    while error.__cause__ is not None:
        error = error.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()
    first = next((line for line in text.splitlines() if line.strip()), "")
    return f"{type(error).__name__}: {first[:300]}"


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
            shapes = batch_dynamic_shapes(model, len(names))
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
    """Compute ops of a QDQ graph that run in fp32: an input not fed by DequantizeLinear (for
    a weighted op: its input or its weight; a float weight keeps it in fp32).

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
        if node.op_type in WEIGHTED_OPS:  # input and weight (not bias) must both be int8
            data_inputs = [name for name in node.input[:2] if name]
        quantized = all(
            name in produced_by and produced_by[name].op_type == "DequantizeLinear"
            for name in data_inputs
        )
        if not quantized or not data_inputs:
            listed.append(f"{node.op_type} {node.name}".strip())
    return listed


def scope_module(node_name: str) -> str:
    """The torch module a TorchScript-exported node came from: ``"/layer1/layer1.0/conv1/Conv"``
    -> ``"layer1.0.conv1"``, ``"/features/features.0/features.0.0/Conv"`` -> ``"features.0.0"``.

    Each scope level is labelled by the module's qualified name from its last non-numeric
    segment on (``conv1``, ``features.0.0``): a label that extends the end of the name so far
    (same attribute, more indices) replaces that end; any other is a new child attribute.
    """
    module: list[str] = []
    for label in (level.split(".") for level in node_name.strip("/").split("/")[:-1]):
        start = max((i for i, part in enumerate(module) if part == label[0]), default=-1)
        tail = module[start:] if start >= 0 else []
        extends = start >= 0 and len(label) > len(tail) and label[: len(tail)] == tail
        module = module[:start] + label if extends else module + label
    return ".".join(module)


def nodes_of_modules(model: onnx.ModelProto, modules: Sequence[str]) -> dict[str, list[str]]:
    """Compute nodes (names) of each torch module in ``modules`` and its children.

    Raises:
        DeployError: a module none of whose nodes is found (an exporter that names nodes
            differently): it could not be kept in floating point.
    """
    found: dict[str, list[str]] = {name: [] for name in modules}
    for node in model.graph.node:
        if node.op_type in LAYOUT_OPS or not node.name:
            continue
        owner = scope_module(node.name)
        for name in modules:
            if owner == name or owner.startswith(name + "."):
                found[name].append(node.name)
    missing = [name for name, nodes in found.items() if not nodes]
    if missing:
        raise DeployError(
            f"no ONNX node of the layer(s) {missing} was found in the exported graph, so they "
            "cannot be kept in floating point; check the names (torch module names, as "
            "model.named_modules() lists them)."
        )
    return found


def excluded_nodes(fp32_path: Path, modules: Sequence[str]) -> tuple[tuple[str, ...], list[str]]:
    """(every node of ``modules``, to exclude from quantization; their weighted nodes, which
    each candidate must be seen running in floating point)."""
    if not modules:
        return (), []
    model = onnx.load(str(fp32_path))
    found = nodes_of_modules(model, modules)
    nodes = tuple(name for names in found.values() for name in names)
    weighted = [n.name for n in model.graph.node if n.name in nodes and n.op_type in WEIGHTED_OPS]
    return nodes, weighted


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

"""torch backend: PT2E static quantization with torchao's X86InductorQuantizer, lowered by
``torch.compile`` (inductor, freezing on) to oneDNN int8 kernels.

The file form is the converted (quantize/dequantize) program as a ``torch.export`` PT2 archive,
``model.pt2``: graph as JSON, weights as raw bytes. Loading it compiles again in the loading
process (inductor caches the compiled kernels on disk). ``torch.export.load`` would fall back to
unpickling a weight it cannot read safely; :func:`check_archive` refuses such a file first."""

from __future__ import annotations

import copy
import io
import json
import pickle
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn

from torchslim.deploy._runtime import Candidate, batch_dynamic_shapes, require, saved_file
from torchslim.deploy.config import DeployConfig, DeployError

_QDQ_NAMES = (
    "quantize_per_tensor",
    "dequantize_per_tensor",
    "quantize_per_channel",
    "dequantize_per_channel",
)
_LAYOUT_NAMES = ("view", "reshape", "flatten", "getitem", "size", "sym_size")


class TorchInductorRunner:
    """The converted PT2E graph under ``torch.compile``; each new batch size compiles once."""

    def __init__(self, converted: fx.GraphModule) -> None:
        self.converted = converted
        self.compiled = torch.compile(converted, dynamic=False)

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        import torch._inductor.config as inductor_config

        with torch.no_grad(), inductor_config.patch(freezing=True):
            return self.compiled(*(_as_exported(x) for x in inputs))


def _as_exported(x: torch.Tensor) -> torch.Tensor:
    """Floating inputs as the float32 the graph was exported with; token ids keep their type."""
    return (x.float() if x.is_floating_point() else x).contiguous()


def _unshare_module_calls(graph_module: fx.GraphModule) -> None:
    """Give each call of a module that is called twice (one ``nn.ReLU`` reused in a block) its
    own name in ``nn_module_stack``; the x86 quantizer otherwise sees one partition with two
    outputs and fails with "Input partition has more than one output node"."""
    for node in graph_module.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if not stack:
            continue
        key, (fqn, module_type) = list(stack.items())[-1]
        if "@" in key:
            stack[key] = (f"{fqn}@{key.rsplit('@', 1)[1]}", module_type)


def quantize_pt2e(
    model: nn.Module, calibration: Sequence[tuple[torch.Tensor, ...]]
) -> fx.GraphModule:
    """Export (dynamic batch), annotate for x86 inductor, calibrate, convert."""
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as x86
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    model = copy.deepcopy(model).eval()
    example = calibration[0]
    shapes = batch_dynamic_shapes(model, len(example))
    exported = torch.export.export(model, example, dynamic_shapes=shapes).module()
    assert isinstance(exported, fx.GraphModule)
    _unshare_module_calls(exported)
    quantizer = x86.X86InductorQuantizer()
    quantizer.set_global(x86.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for batch_inputs in calibration:
            prepared(*batch_inputs)
    return convert_pt2e(prepared)


def fp32_ops(graph_module: fx.GraphModule) -> list[str]:
    """Compute nodes of the converted graph whose tensor inputs are not dequantized int8."""
    listed = []
    for node in graph_module.graph.nodes:
        name = getattr(node.target, "__name__", str(node.target))
        if node.op != "call_function" or any(part in name for part in _QDQ_NAMES + _LAYOUT_NAMES):
            continue
        sources = [arg for arg in node.all_input_nodes if arg.op != "get_attr"]
        fed_by_dequantize = all("dequantize" in str(arg.target) for arg in sources)
        if sources and not fed_by_dequantize:
            listed.append(f"{name} {node.name}")
    return listed


def _constant_bytes(graph_module: fx.GraphModule) -> int:
    """Bytes of the converted graph's weights and buffers at their stored dtypes (int8 weights)."""
    tensors = {id(t): t for t in [*graph_module.parameters(), *graph_module.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def save_program(converted: fx.GraphModule, example: tuple[torch.Tensor, ...], path: Path) -> Path:
    """The converted graph as a PT2 archive (dynamic batch), loadable by :func:`load`."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    shapes = tuple({0: batch} for _ in example)
    program = torch.export.export(converted, tuple(example), dynamic_shapes=shapes)
    torch.export.save(program, str(path))
    return path


def check_archive(path: Path) -> None:
    """Refuse a PT2 archive that would make ``torch.export.load`` unpickle anything: weights or
    constants stored as pickles, or sample inputs that are not plain tensors."""
    try:
        with zipfile.ZipFile(path) as archive:
            for name in (n for n in archive.namelist() if n.endswith("_config.json")):
                entries = json.loads(archive.read(name)).get("config", {}).values()
                if any(entry.get("use_pickle", True) for entry in entries):
                    raise DeployError(f"{path}: {name} stores pickled objects; not loading it.")
            for name in (n for n in archive.namelist() if "/sample_inputs/" in n):
                torch.load(io.BytesIO(archive.read(name)), weights_only=True)
    except (zipfile.BadZipFile, OSError, RuntimeError, KeyError, ValueError) as error:
        raise DeployError(f"{path} is not a readable torch.export PT2 archive: {error}") from error
    except pickle.UnpicklingError as error:
        raise DeployError(f"{path}: its sample inputs are not plain tensors: {error}") from error


def load(directory: Path, settings: dict[str, Any], threads: int) -> TorchInductorRunner:
    """The runner of a saved torch deployment (``model.pt2``), compiled in this process."""
    path = saved_file(directory, "model.pt2", "torch", "a torch PT2E")
    check_archive(path)
    program = torch.export.load(str(path))
    module = program.module()
    assert isinstance(module, fx.GraphModule)
    return TorchInductorRunner(module)


def build(
    model: nn.Module,
    calibration: Sequence[tuple[torch.Tensor, ...]],
    config: DeployConfig,
    workdir: Path,
) -> Candidate:
    """The PT2E x86-inductor candidate, compiled for the calibration and measuring shapes, and
    its ``model.pt2``."""
    require("torch")
    converted = quantize_pt2e(model, calibration)
    saved = save_program(converted, calibration[0], workdir / "torch-pt2e.pt2")
    runner = TorchInductorRunner(converted)
    settings: dict[str, Any] = {
        "engine": "torch-inductor",
        "quantizer": "torchao X86InductorQuantizer (default: per-channel int8 weights, uint8 "
        "activations)",
        "freezing": True,
        "constant_bytes": _constant_bytes(converted),
    }
    files = {"model.pt2": saved}
    return Candidate(
        "torch-pt2e-x86-inductor", "torch", runner, settings, files, fp32_ops(converted)
    )

"""A transformers model's fp32 weights read from a GGUF one tensor at a time.

transformers' own GGUF loading dequantizes every tensor into a dict before it fills the model,
so the process holds the checkpoint twice while loading (SmolLM2-135M: 1265 MiB peak for a
513 MiB model). Here the GGUF is memory-mapped and each tensor is dequantized (and, for
LLaMA's q/k, un-permuted by transformers' own tensor processor) only when asked for, so a
model skeleton on ``meta`` can be filled tensor by tensor, or block by block while a
calibration walks it (:mod:`torchslim.quantize.stream`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from torchslim.deploy.gguf_file import GGUFTensor, check_gguf
from torchslim.errors import ModelLoadError


class TensorSource(Protocol):
    """Where a skeleton's parameters come from: state-dict names and one tensor at a time."""

    def names(self) -> set[str]: ...

    def tensor(self, name: str) -> Tensor: ...


class GGUFWeights:
    """Name -> fp32 tensor of ``model`` (a transformers model, e.g. on ``meta``) from ``path``.

    Names are those of ``model.state_dict()`` with ``prefix`` in front (the name the model has
    inside a wrapper, e.g. ``"model."``). Tied weights absent from the file (an LM head sharing
    the embedding) are absent here too: the caller ties them.
    """

    def __init__(self, path: str | Path, model: Any, prefix: str = "") -> None:
        from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor

        self.path = Path(path)
        header = check_gguf(self.path)  # the header only: the vocabulary's arrays are skipped
        architecture, infos = header.architecture, header.tensors
        config = model.config.to_dict()
        self._processor = TENSOR_PROCESSORS.get(architecture, TensorProcessor)(config=config)
        mapping = _name_map(model, architecture)  # GGUF name -> HF name
        self._mapping = mapping
        self._tensors = {prefix + mapping[i.name]: i for i in infos if i.name in mapping}

    def names(self) -> set[str]:
        return set(self._tensors)

    def tensor(self, name: str) -> Tensor:
        """The fp32 tensor ``name``, dequantized now (a fresh CPU tensor the caller owns)."""
        import numpy as np
        from gguf import GGMLQuantizationType, dequantize

        if name not in self._tensors:
            raise ModelLoadError(f"{self.path.name} has no tensor for {name!r}")
        stored = self._tensors[name]
        data = _tensor_data(self.path, stored)
        weights = dequantize(data, GGMLQuantizationType(stored.ggml_type))
        processed = self._processor.process(
            weights=weights, name=stored.name, tensor_key_mapping=self._mapping,
            parsed_parameters={"tensors": {}, "config": {}},
        )  # fmt: skip
        return torch.from_numpy(np.array(processed.weights, dtype=np.float32))  # owned copy


def _name_map(model: Any, architecture: str) -> dict[str, str]:
    """GGUF tensor name -> the model's state-dict name, by gguf-py's name table. (transformers'
    ``get_gguf_hf_weights_map`` does the same but rebuilds a state dict per submodule: ~20 s.)"""
    from gguf import MODEL_ARCH_NAMES, get_tensor_name_map

    arch = next((key for key, value in MODEL_ARCH_NAMES.items() if value == architecture), None)
    if arch is None:
        raise ModelLoadError(f"GGUF architecture {architecture!r} is unknown to gguf-py")
    table = get_tensor_name_map(arch, model.config.num_hidden_layers)
    mapping = {}
    for hf_name in model.state_dict(keep_vars=True):
        stem, _, suffix = hf_name.rpartition(".")
        parts = stem.split(".")
        for start in range(len(parts)):  # "model.layers.0.mlp.up_proj", then without "model."
            found = table.get_name(".".join(parts[start:]))
            if found is not None:
                mapping[f"{found}.{suffix}"] = hf_name
                break
    return mapping


def _tensor_data(path: Path, stored: GGUFTensor) -> Any:
    """The stored bytes (quantized types) or values of ``stored``, memory-mapped, in numpy's
    shape."""
    import numpy as np
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    kind = GGMLQuantizationType(stored.ggml_type)
    shape = tuple(reversed(stored.dims))
    plain = {GGMLQuantizationType.F32: np.float32, GGMLQuantizationType.F16: np.float16}
    if kind in plain:
        return np.memmap(path, dtype=plain[kind], mode="r", offset=stored.offset, shape=shape)
    block, type_bytes = GGML_QUANT_SIZES[kind]
    byte_shape = (*shape[:-1], shape[-1] // block * type_bytes)
    return np.memmap(path, dtype=np.uint8, mode="r", offset=stored.offset, shape=byte_shape)


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Build modules with their parameters on ``meta`` and their buffers (rotary tables) real."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        yield


def materialize_(
    root: nn.Module, weights: TensorSource, prefix: str = "", module: nn.Module | None = None,
    skip: str | None = None,
) -> int:  # fmt: skip
    """Replace ``module``'s (default: ``root``'s) parameters on ``meta`` by the checkpoint's,
    one tensor at a time; ``prefix`` is ``module``'s name in ``root``; names starting with
    ``skip`` stay on ``meta``. Parameters already real are kept, and so are those the file
    lacks (tied to another: ``tie_`` after). Returns the bytes materialized."""
    module = root if module is None else module
    available = weights.names()
    total = 0
    for name, parameter in list(module.named_parameters()):
        full = prefix + name
        if not parameter.is_meta or full not in available or (skip and full.startswith(skip)):
            continue
        owner_name, _, leaf = name.rpartition(".")
        owner = module.get_submodule(owner_name) if owner_name else module
        tensor = weights.tensor(full).view(parameter.shape)
        owner._parameters[leaf] = nn.Parameter(tensor, requires_grad=parameter.requires_grad)
        total += tensor.numel() * tensor.element_size()
    return total


def tie_(model: nn.Module) -> None:
    """Re-tie the shared weights (an LM head and its embedding) of the transformers model in
    ``model`` after its parameters were replaced."""
    for module in model.modules():
        tie = getattr(module, "tie_weights", None)
        if callable(tie):
            tie()
            return

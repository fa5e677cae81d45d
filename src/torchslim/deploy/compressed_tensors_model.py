"""A compressed-tensors directory as transformers loads it, as a torchslim runtime: the model
``from_pretrained`` builds, called as the zoo wrapper it came from calls it, so the zoo's metric
measures what a transformers user gets; ``artifact`` holds the directory's files for ``save``."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchslim.deploy._runtime import file_digests
from torchslim.deploy.compressed_tensors_export import WEIGHTS, CompressedTensorsExport


class CompressedTensorsModel(nn.Module):
    """The model transformers loads from an exported directory, in ``wrapper``'s place.

    Args:
        export: what ``export_compressed_tensors`` wrote (its directory is read here, so it may
            be removed afterwards).
        wrapper: the exported model (a zoo wrapper around the transformers model, or that
            model itself): its call convention is kept, its weights are not used.
        prefix: where the transformers model sits in ``wrapper`` (``"model."``; ``""``: it is).
    """

    def __init__(self, export: CompressedTensorsExport, wrapper: nn.Module, prefix: str) -> None:
        super().__init__()
        files = sorted(p for p in export.directory.iterdir() if p.is_file())
        self.artifact = {p.name: p.read_bytes() for p in files if not p.name.startswith(".")}
        self.quantization_config = export.quantization_config
        self.layers = dict(export.layers)
        with tempfile.TemporaryDirectory(prefix="torchslim-ct-") as scratch:
            for name, data in self.artifact.items():  # loaded from the bytes it will save
                (Path(scratch) / name).write_bytes(data)
            loaded = _from_pretrained(Path(scratch), wrapper, prefix)
        self.model = _swapped(wrapper, prefix.split(".")[:-1], loaded)

    def forward(self, *inputs: torch.Tensor) -> Any:
        return self.model(*inputs)

    def saved_size_bytes(self) -> int:
        """Bytes of the weights file (config and tokenizer files are not weights)."""
        return len(self.artifact[WEIGHTS])

    def manifest(self) -> dict[str, Any]:
        from torchslim._compress import versions

        return {
            "backend": "transformers",
            "format": "compressed-tensors",
            "files": file_digests(self.artifact),
            "quantization_config": self.quantization_config,
            "layers": self.layers,
            "versions": versions(),
        }


def _from_pretrained(directory: Path, wrapper: nn.Module, prefix: str) -> nn.Module:
    """``from_pretrained`` of the auto class that builds the wrapped model's type."""
    import transformers

    from torchslim._hf_directory import auto_class

    inner = wrapper.get_submodule(prefix.rstrip("."))
    name = auto_class(inner) or type(inner).__name__
    loaded: nn.Module = getattr(transformers, name).from_pretrained(str(directory))
    return loaded.eval()


def _swapped(outer: nn.Module, path: list[str], inner: nn.Module) -> nn.Module:
    """A shallow copy of ``outer`` with the submodule at ``path`` replaced by ``inner``; the
    modules along the path are copied, so ``outer`` itself is left as it was."""
    if not path:
        return inner
    shell = copy.copy(outer)
    shell._modules = dict(outer._modules)
    child = outer._modules[path[0]]
    assert child is not None
    shell._modules[path[0]] = _swapped(child, path[1:], inner)
    return shell

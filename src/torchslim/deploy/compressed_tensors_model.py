"""A compressed-tensors directory as transformers loads it, as a torchslim runtime: the model
``from_pretrained`` builds, called as the zoo wrapper it came from calls it, so the zoo's metric
measures what a transformers user gets; ``artifact`` holds the directory's files for ``save``,
and ``load_artifact`` reads a saved artifact back the same way (``from_pretrained`` on it)."""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchslim.deploy._runtime import file_digests, read_files
from torchslim.deploy.compressed_tensors_export import (
    CONFIG,
    WEIGHTS,
    CompressedTensorsExport,
)
from torchslim.errors import ModelLoadError

BACKEND = "transformers"
FORMAT = "compressed-tensors"


class CompressedTensorsModel(nn.Module):
    """The model transformers loads from a compressed-tensors directory, in ``wrapper``'s place.

    Args:
        artifact: file name -> bytes of the directory (``config.json``, ``model.safetensors``,
            tokenizer files): what ``save`` writes.
        model: what ``from_pretrained`` built, inside the wrapper it replaces (if any).
        quantization_config: the ``quantization_config`` of ``config.json`` (without the method).
        layers: transformers layer name -> torchslim weight format.
    """

    def __init__(
        self,
        artifact: dict[str, bytes],
        model: nn.Module,
        quantization_config: dict[str, Any],
        layers: dict[str, str],
    ) -> None:
        super().__init__()
        self.artifact = dict(artifact)
        self.model = model
        self.quantization_config = quantization_config
        self.layers = dict(layers)

    @classmethod
    def from_export(
        cls, export: CompressedTensorsExport, wrapper: nn.Module, prefix: str
    ) -> CompressedTensorsModel:
        """What transformers loads from ``export``'s directory (read here, so it may be removed
        afterwards), called as ``wrapper`` (the exported model: a zoo wrapper around the
        transformers model at ``prefix``, ``"model."``, or that model itself, ``""``) is."""
        files = sorted(p for p in export.directory.iterdir() if p.is_file())
        artifact = {p.name: p.read_bytes() for p in files if not p.name.startswith(".")}
        with tempfile.TemporaryDirectory(prefix="torchslim-ct-") as scratch:
            for name, data in artifact.items():  # loaded from the bytes it will save
                (Path(scratch) / name).write_bytes(data)
            loaded = _from_pretrained(Path(scratch), _auto_class(wrapper, prefix))
        model = _swapped(wrapper, prefix.split(".")[:-1], loaded)
        return cls(artifact, model, export.quantization_config, export.layers)

    def forward(self, *inputs: torch.Tensor) -> Any:
        return self.model(*inputs)

    def saved_size_bytes(self) -> int:
        """Bytes of the weights file (config and tokenizer files are not weights)."""
        return len(self.artifact[WEIGHTS])

    def manifest(self) -> dict[str, Any]:
        from torchslim._compress import versions

        return {
            "backend": BACKEND,
            "format": FORMAT,
            "files": file_digests(self.artifact),
            "quantization_config": self.quantization_config,
            "layers": self.layers,
            "versions": versions(),
        }


def is_compressed_tensors(manifest: dict[str, Any]) -> bool:
    """Whether a deployed manifest describes a compressed-tensors directory."""
    return manifest.get("backend") == BACKEND and manifest.get("format") == FORMAT


def load_artifact(
    directory: Path,
    manifest: dict[str, Any],
    wrapper: Callable[[], nn.Module] | None,
    device: str,
) -> CompressedTensorsModel:
    """A saved compressed-tensors artifact as transformers loads it: ``from_pretrained`` on the
    directory itself (after every file is checked against its checksum), the class named by
    ``config.json``; ``wrapper`` builds the exported model (any device, e.g. ``meta``: only its
    call convention is kept), without it the transformers model is called directly.

    Raises:
        DeployError: a file missing or not matching its checksum in the manifest.
        ModelLoadError: a ``config.json`` that names no transformers class.
    """
    from torchslim._hf_directory import hf_directory

    artifact = read_files(directory, manifest)
    loaded = _from_pretrained(directory, _config_class(directory)).to(device)
    model = loaded
    if wrapper is not None:
        shell = wrapper()
        prefix = hf_directory(shell).prefix
        model = _swapped(shell, prefix.split(".")[:-1], loaded)
    return CompressedTensorsModel(
        artifact, model, manifest.get("quantization_config", {}), manifest.get("layers", {})
    )


def _config_class(directory: Path) -> str:
    """The transformers class ``config.json`` names (``architectures``)."""
    import json

    import transformers

    config = json.loads((directory / CONFIG).read_text()) if (directory / CONFIG).is_file() else {}
    names = config.get("architectures") or []
    if not names or getattr(transformers, names[0], None) is None:
        raise ModelLoadError(
            f"{directory / CONFIG} names no transformers class (architectures={names!r}): the "
            "compressed-tensors artifact is incomplete; export it again"
        )
    return str(names[0])


def _auto_class(wrapper: nn.Module, prefix: str) -> str:
    """The auto class that builds the wrapped model's type (or its own class name)."""
    from torchslim._hf_directory import auto_class

    inner = wrapper.get_submodule(prefix.rstrip("."))
    return auto_class(inner) or type(inner).__name__


def _from_pretrained(directory: Path, class_name: str) -> nn.Module:
    """``transformers.<class_name>.from_pretrained(directory)``, in eval mode."""
    import transformers

    loaded: nn.Module = getattr(transformers, class_name).from_pretrained(str(directory))
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

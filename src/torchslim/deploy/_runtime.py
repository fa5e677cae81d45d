"""What every backend hands back: a runtime callable on torch tensors and how it was built."""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchslim.deploy.config import PIP_EXTRAS, BackendUnavailableError

Runtime = Callable[..., torch.Tensor]  # runtime(*inputs) -> output, all torch tensors on CPU
Feeds = list[dict[str, np.ndarray]]  # calibration batches as ONNX feeds (input name -> array)

# The import names a backend needs, in the order they are checked.
REQUIRED_MODULES = {
    "onnxruntime": ("onnxruntime", "onnx"),
    "openvino": ("openvino", "nncf", "onnx"),
    "torch": ("torchao",),
}


@dataclass
class Candidate:
    """One way of running the quantized model, built and ready to be checked and measured.

    Attributes:
        name: unique label, e.g. ``"onnxruntime-u8s8"``.
        backend: ``"onnxruntime"``, ``"openvino"`` or ``"torch"``.
        runtime: callable on torch tensors.
        settings: everything needed to rebuild the runtime from the files (saved in the manifest).
        files: artifact file name -> its path in the build directory (empty: not saveable).
        fp32_ops: ops that stayed in fp32 (``"<op type> <name>"``).
    """

    name: str
    backend: str
    runtime: Runtime
    settings: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)
    fp32_ops: list[str] = field(default_factory=list)


def missing_module(backend: str) -> str | None:
    """The first module ``backend`` needs that is not installed, or None."""
    for module in REQUIRED_MODULES[backend]:
        if importlib.util.find_spec(module) is None:
            return module
    return None


def require(backend: str) -> None:
    """Raise BackendUnavailableError naming the pip extra when ``backend`` is not installed."""
    module = missing_module(backend)
    if module is not None:
        raise BackendUnavailableError(
            f"deploy backend {backend!r} needs the Python package {module!r}, which is not "
            f"installed. Install it with: {PIP_EXTRAS[backend]}; or choose another backend "
            "(backend='auto' uses whichever are installed)."
        )


def saved_file(directory: Path, name: str, backend: str, label: str) -> Path:
    """``directory / name`` of a saved ``backend`` deployment (``label`` names it in the error);
    BackendUnavailableError if the backend is not installed, DeployError if the file is missing."""
    from torchslim.deploy.config import DeployError

    require(backend)
    path = directory / name
    if not path.is_file():
        raise DeployError(f"{directory} has no {name}; it is not {label} deployment.")
    return path


def candidate_threads(settings: dict[str, Any], default: int = 1) -> int:
    """The intra-op thread count a candidate was built and measured with (its settings)."""
    count = settings.get("intra_op_threads", settings.get("inference_threads", default))
    return int(count)


def to_numpy(inputs: Sequence[torch.Tensor]) -> list[np.ndarray]:
    """Contiguous numpy views of CPU tensors (no copy where already so): floating tensors as
    float32, integer ones (token ids) keep their type, which the exported graph declares."""
    return [
        x.detach()
        .to("cpu", torch.float32 if x.is_floating_point() else x.dtype)
        .contiguous()
        .numpy()
        for x in inputs
    ]


def file_digests(artifact: dict[str, bytes]) -> dict[str, dict[str, Any]]:
    """Bytes and sha256 of every artifact file, for the manifest (``load`` checks them)."""
    return {
        name: {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        for name, data in artifact.items()
    }


def write_artifact(out: str | Path, artifact: dict[str, bytes], manifest: dict[str, Any]) -> Path:
    """Write the deployable files and ``manifest.json`` to the directory ``out``, atomically."""
    from torchslim._io import atomic_directory, write_json

    target = Path(out)
    with atomic_directory(target) as tmp:
        for name, data in artifact.items():
            (tmp / name).write_bytes(data)
        write_json(tmp / "manifest.json", manifest)
    return target


def read_artifact(path: str | Path, what: str) -> tuple[Path, dict[str, Any], dict[str, bytes]]:
    """(directory, manifest, files) of an artifact directory, every file checked against its
    sha256 in the manifest. Raises ``DeployError`` naming the missing or altered file."""
    directory = Path(path)
    manifest = read_manifest_file(directory, what)
    return directory, manifest, read_files(directory, manifest)


def read_manifest_file(directory: Path, what: str) -> dict[str, Any]:
    """``directory/manifest.json``; ``DeployError`` saying the directory is not ``what``."""
    import json

    from torchslim.deploy.config import DeployError

    manifest_path = directory / "manifest.json"
    if not manifest_path.is_file():
        raise DeployError(f"{directory} has no manifest.json; it is not {what}.")
    manifest: dict[str, Any] = json.loads(manifest_path.read_text())
    return manifest


def read_files(directory: Path, manifest: dict[str, Any]) -> dict[str, bytes]:
    """File name -> bytes of every file the manifest lists, each checked against its sha256.
    Raises ``DeployError`` naming the missing or altered file."""
    from torchslim.deploy.config import DeployError

    artifact = {}
    for name, info in manifest.get("files", {}).items():
        file = directory / name
        data = file.read_bytes() if file.is_file() else b""
        if hashlib.sha256(data).hexdigest() != info["sha256"]:
            raise DeployError(f"{file} is missing or does not match its checksum in the manifest.")
        artifact[name] = data
    return artifact


def batch_dynamic_shapes(model: torch.nn.Module, count: int) -> tuple[Any, ...]:
    """torch.export's ``dynamic_shapes`` for ``count`` positional inputs with a dynamic batch
    axis; a ``forward(*inputs)`` (the zoo's Hugging Face wrapper) takes them as one entry."""
    import inspect

    batch = torch.export.Dim("batch", min=1, max=4096)
    per_input = tuple({0: batch} for _ in range(count))
    kinds = [p.kind for p in inspect.signature(model.forward).parameters.values()]
    if kinds and kinds[0] is inspect.Parameter.VAR_POSITIONAL:
        return (per_input,)
    return per_input

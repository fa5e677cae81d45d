"""The deployed model: an ``nn.Module`` around a low-precision runtime, and its artifact
(``model.onnx`` + ``manifest.json``, written atomically, read back without pickle)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchslim.deploy import onnxruntime_backend, openvino_backend, torch_backend
from torchslim.deploy._runtime import (
    Candidate,
    Runtime,
    candidate_threads,
    file_digests,
    read_files,
    read_manifest_file,
    write_artifact,
)
from torchslim.deploy.config import DeployError
from torchslim.errors import ConfigError

ARTIFACT_FORMAT = "torchslim-deployed-v1"
_LOADERS: dict[str, Callable[[Path, dict[str, Any], int], Runtime]] = {
    "onnxruntime": onnxruntime_backend.load,
    "openvino": openvino_backend.load,
    "torch": torch_backend.load,
}


class DeployedModel(nn.Module):
    """A model running in true int8 (or bf16) on one backend; ``forward`` takes and returns tensors,
    so ``torchslim.evaluate`` and the zoo metrics work on it unchanged.

    Attributes:
        backend: ``"onnxruntime"``, ``"openvino"`` or ``"torch"``.
        candidate: the variant that runs (e.g. ``"onnxruntime-u8s8"``).
        settings: how it was built and how its runtime is configured.
        fp32_ops: ops that stayed in fp32 (the backend could not run them in int8).
        decision: what ``backend="auto"`` measured for every candidate and why this one won.
        artifact: file name -> bytes of the deployable files (``model.onnx``; ``model.pt2``
            for the torch backend).
    """

    def __init__(
        self,
        candidate: Candidate,
        artifact: dict[str, bytes],
        decision: dict[str, Any],
        source_parameter_count: int,
    ) -> None:
        super().__init__()
        self.runtime: Runtime = candidate.runtime
        self.backend = candidate.backend
        self.candidate = candidate.name
        self.settings = dict(candidate.settings)
        self.fp32_ops = list(candidate.fp32_ops)
        self.decision = decision
        self.artifact = dict(artifact)
        self.source_parameter_count = source_parameter_count

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.runtime(*inputs)

    def saved_size_bytes(self) -> int:
        """Bytes on disk of the deployable files (what ``save`` writes besides the manifest)."""
        return sum(len(data) for data in self.artifact.values())

    def parameter_count(self) -> int:
        """Parameters of the model that was deployed (the same weights, now int8)."""
        return self.source_parameter_count

    def manifest(self) -> dict[str, Any]:
        from torchslim._compress import versions

        files = file_digests(self.artifact)
        return {
            "format": ARTIFACT_FORMAT,
            "backend": self.backend,
            "candidate": self.candidate,
            "settings": self.settings,
            "fp32_ops": self.fp32_ops,
            "parameter_count": self.source_parameter_count,
            "files": files,
            "decision": self.decision,
            "versions": versions(),
        }

    def save(self, out: str | Path) -> Path:
        """Write the artifact directory ``out`` (files + ``manifest.json``), atomically."""
        return write_artifact(out, self.artifact, self.manifest())

    def extra_repr(self) -> str:
        return f"backend={self.backend!r}, candidate={self.candidate!r}"


def load_deployed(
    path: str | Path,
    threads: int | None = None,
    device: str = "cpu",
    wrapper: Callable[[], nn.Module] | None = None,
) -> nn.Module:
    """Load a deployed artifact directory, dispatching on its manifest (no pickle anywhere):
    written by :meth:`DeployedModel.save` (ONNX, OpenVINO IR, a checked PT2 archive), by
    ``DeployedTextModel.save`` (an int8 text encoder), or by a pipeline's ``gguf`` step (a GGUF
    file llama.cpp runs, checked by ``check_gguf`` first) or ``compressed_tensors`` step (a
    Hugging Face directory transformers loads).

    Args:
        path: the artifact directory.
        threads: overrides the intra-op thread count recorded at deployment (llama.cpp's
            ``n_threads`` for a GGUF).
        device: where the model runs: ``"cpu"`` for every runtime but transformers'.
        wrapper: builds the model that was exported (any device: only its call convention is
            kept) for a compressed-tensors artifact; without it, the transformers model itself.

    Raises:
        DeployError: not a deployed artifact, or a file that does not match its checksum.
        ModelLoadError: a GGUF file that is not one, too new, or truncated.
        ConfigError: a ``device`` the artifact's runtime does not run on.
    """
    from torchslim.deploy import compressed_tensors_model, llama_cpp_model, text_artifact

    directory = Path(path)
    manifest = read_manifest_file(directory, "a deployed artifact")
    if manifest.get("backend") == llama_cpp_model.BACKEND:
        return llama_cpp_model.load_artifact(directory, manifest, threads, device)
    if compressed_tensors_model.is_compressed_tensors(manifest):
        return compressed_tensors_model.load_artifact(directory, manifest, wrapper, device)
    if torch.device(device).type != "cpu":
        raise ConfigError(
            f"{directory} is a {manifest.get('backend')} runtime, which runs on the CPU: "
            f"device {device!r} does not apply; leave it out (or use --device cpu)"
        )
    if manifest.get("format") == text_artifact.ARTIFACT_FORMAT:
        return text_artifact.load_text_int8(directory, threads)
    if manifest.get("format") != ARTIFACT_FORMAT or manifest.get("backend") not in _LOADERS:
        raise DeployError(
            f"{directory / 'manifest.json'} is not a {ARTIFACT_FORMAT} artifact of a saveable "
            f"backend (format={manifest.get('format')!r}, backend={manifest.get('backend')!r})."
        )
    artifact = read_files(directory, manifest)
    settings = manifest["settings"]
    count = threads or candidate_threads(settings)
    runtime = _LOADERS[manifest["backend"]](directory, settings, count)
    candidate = Candidate(
        manifest["candidate"], manifest["backend"], runtime, settings, {}, manifest["fp32_ops"]
    )
    return DeployedModel(candidate, artifact, manifest["decision"], manifest["parameter_count"])

"""The deployed int8 text encoder: an ``nn.Module`` with the fp32 model's forward signature and
output, and its artifact (ONNX or OpenVINO IR + ``manifest.json``; atomic, no pickle)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from torchslim.deploy._runtime import file_digests, read_artifact, write_artifact
from torchslim.deploy.config import DeployError
from torchslim.deploy.text_config import TextDeployConfig

if TYPE_CHECKING:
    from torchslim.deploy.text_candidates import TextCandidate, TextRunner

ARTIFACT_FORMAT = "torchslim-deployed-text-v1"
MASK_NAME = "attention_mask"


def trim_padding(inputs: Sequence[torch.Tensor], names: Sequence[str]) -> tuple[torch.Tensor, ...]:
    """Drop the trailing sequence columns where ``attention_mask`` is 0 in every row.

    Padded key positions are masked out of attention and out of mean pooling, so a pooled
    embedding does not change; the work shrinks to the longest real sentence of the batch.
    Inputs without an ``attention_mask`` are returned unchanged.
    """
    if MASK_NAME not in names:
        return tuple(inputs)
    mask = inputs[list(names).index(MASK_NAME)]  # (B, T)
    columns = torch.nonzero(mask.ne(0).any(dim=0))  # (K, 1)
    keep = int(columns.max()) + 1 if columns.numel() else 1
    return tuple(x[:, :keep] if x.dim() >= 2 else x for x in inputs)


class DeployedTextModel(nn.Module):
    """An int8 text encoder running on ONNX Runtime, OpenVINO or ``torch._int_mm``; ``forward``
    takes and returns torch tensors like the fp32 model, so ``entry.evaluate(deployed)`` works
    unchanged.

    Attributes:
        candidate: the variant that runs (e.g. ``"openvino-nncf-bf16"``).
        backend: ``"onnxruntime"``, ``"openvino"`` or ``"torch-int8"``.
        input_names: the positional inputs, in order.
        settings: how the runtime is configured (threads, precision of the leftover ops).
        fp32_ops: compute ops that stayed in floating point.
        decision: every candidate's figures and why this one won.
        artifact: file name -> bytes of the deployable files.
    """

    def __init__(self, runner: TextRunner, manifest: dict[str, Any], artifact: dict[str, bytes]):
        super().__init__()
        # An empty parameter: code that asks a model for its device (next(model.parameters()),
        # as the zoo's text metrics do) finds the CPU instead of failing on a weightless module.
        self.device_anchor = nn.Parameter(torch.empty(0), requires_grad=False)
        self.runner = runner
        self.candidate = str(manifest["candidate"])
        self.backend = str(manifest["backend"])
        self.input_names = list(manifest["input_names"])
        self.settings = dict(manifest["settings"])
        self.fp32_ops = list(manifest["fp32_ops"])
        self.decision = dict(manifest["decision"])
        self.config = TextDeployConfig.from_dict(manifest["config"])
        self.artifact = dict(artifact)

    @classmethod
    def from_candidate(
        cls,
        candidate: TextCandidate,
        input_names: list[str],
        decision: dict[str, Any],
        config: TextDeployConfig,
    ) -> DeployedTextModel:
        """Wrap the chosen candidate; its files are read into memory (the build dir goes)."""
        artifact = {name: path.read_bytes() for name, path in candidate.files.items()}
        manifest = {
            "candidate": candidate.name,
            "backend": candidate.runner.backend,
            "input_names": input_names,
            "settings": {**candidate.runner.settings(), "build": candidate.build},
            "fp32_ops": candidate.runner.fp32_ops(),
            "decision": decision,
            "config": config.to_dict(),
        }
        return cls(candidate.runner, manifest, artifact)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        if len(inputs) != len(self.input_names):
            raise DeployError(
                f"the deployed model takes {len(self.input_names)} inputs {self.input_names}, "
                f"got {len(inputs)}"
            )
        if self.config.trim_padding:
            inputs = trim_padding(inputs, self.input_names)
        return self.runner(*inputs)

    def saved_size_bytes(self) -> int:
        """Bytes of the deployable files (what ``save`` writes besides the manifest)."""
        return sum(len(data) for data in self.artifact.values())

    def manifest(self) -> dict[str, Any]:
        from torchslim._compress import versions

        files = file_digests(self.artifact)
        return {
            "format": ARTIFACT_FORMAT,
            "candidate": self.candidate,
            "backend": self.backend,
            "input_names": self.input_names,
            "settings": self.settings,
            "fp32_ops": self.fp32_ops,
            "files": files,
            "decision": self.decision,
            "config": self.config.to_dict(),
            "versions": versions(),
        }

    def save(self, out: str | Path) -> Path:
        """Write the artifact directory ``out`` (model files + ``manifest.json``), atomically."""
        return write_artifact(out, self.artifact, self.manifest())

    def extra_repr(self) -> str:
        return f"candidate={self.candidate!r}, inputs={self.input_names}"


def load_text_int8(path: str | Path, threads: int | None = None) -> DeployedTextModel:
    """Load a directory written by :meth:`DeployedTextModel.save` (ONNX/IR + JSON, no pickle).

    ``threads`` overrides the thread count recorded at deployment. Files whose checksum does not
    match the manifest are refused.
    """
    from torchslim.deploy.text_candidates import load_runner

    directory, manifest, artifact = read_artifact(path, "a deployed text model")
    if manifest.get("format") != ARTIFACT_FORMAT:
        raise DeployError(
            f"{directory / 'manifest.json'} is not a {ARTIFACT_FORMAT} artifact "
            f"(format={manifest.get('format')!r}); load it with the loader that wrote it."
        )
    settings = manifest["settings"]
    count = threads or int(settings.get("intra_op_threads", settings.get("inference_threads", 1)))
    runner = load_runner(manifest["candidate"], directory, manifest["input_names"], settings, count)
    return DeployedTextModel(runner, manifest, artifact)

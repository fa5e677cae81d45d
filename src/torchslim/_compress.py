"""What every model-changing command shares: the artifact directory and the before/after report.

The contract (DEVELOPERS.md): ``{"model", "technique", "before": {evaluate}, "after": {evaluate},
"artifact": path}``, both sides measured in the same run, on the same inputs and threads.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.table import Table
from torch import nn

from torchslim._hf_directory import HFDirectory
from torchslim._io import atomic_directory, save_tensors, write_json
from torchslim._machine import machine_facts
from torchslim._progress import stage
from torchslim._rollback import untouched_on_failure as untouched_on_failure  # re-exported
from torchslim.evaluate import EvaluationReport, comparison_table, evaluate
from torchslim.zoo import ZooEntry


@dataclass(frozen=True)
class CompressionOutcome:
    """Before and after one technique, measured in the same run, and where the result lies."""

    model: str
    technique: str
    before: EvaluationReport
    after: EvaluationReport
    artifact: Path
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "technique": self.technique,
            "before": self.before.to_dict(),
            "after": self.after.to_dict(),
            "artifact": str(self.artifact),
            "details": self.details,
        }

    def to_table(self) -> Table:
        return comparison_table(self.before, self.after, f"{self.model}: {self.technique}")


def measure_before_after(
    entry: ZooEntry,
    before: nn.Module,
    after: nn.Module,
    technique: str,
    artifact: Path,
    options: dict[str, Any] | None = None,
) -> CompressionOutcome:
    """Evaluate ``before`` and ``after`` on ``entry`` back to back with the same settings.

    ``options`` may hold ``batch_size``, ``threads``, ``repeats``, ``device`` (passed to
    ``evaluate``) and ``details`` (copied into the outcome).
    """
    options = dict(options or {})
    details = options.pop("details", {})
    keys = ("batch_size", "threads", "repeats", "device")
    settings = {k: options[k] for k in keys if k in options}
    with stage("measuring the original"):
        report_before = evaluate(before, entry, **settings)
    with stage("measuring the result"):
        report_after = evaluate(after, entry, **settings)
    details = {"machine": machine_facts(), **details}
    return CompressionOutcome(
        entry.name, technique, report_before, report_after, Path(artifact), details
    )


def versions() -> dict[str, str]:
    """Versions that decide what an artifact means (recorded in every manifest)."""
    import torchslim

    return {"torchslim": torchslim.__version__, "torch": torch.__version__,
            "python": platform.python_version()}  # fmt: skip


def write_model_artifact(
    out: Path,
    model: nn.Module,
    manifest: dict[str, Any],
    extra_files: dict[str, Path] | None = None,
    dense_weights: bool = True,
    hf: HFDirectory | None = None,
) -> Path:
    """Write ``out/model.safetensors`` + ``out/manifest.json`` (+ extra files) atomically;
    ``dense_weights=False`` leaves out ``model.safetensors`` (an extra file holds the weights).

    ``extra_files`` maps a name inside the artifact to a file to copy there (e.g. ``model.onnx``).
    ``hf``: lay the weights out as a Hugging Face directory (see :mod:`torchslim._hf_directory`)
    and add its fields to the manifest. The directory appears complete or not at all; an
    existing one is replaced only on success.
    """
    with stage(f"writing {out}"), atomic_directory(out) as tmp:
        state = model.state_dict() if dense_weights else None
        if hf is not None:
            manifest = {**manifest, **hf.write(tmp, state)}
        elif state is not None:
            save_tensors(tmp / "model.safetensors", state)
        for name, source in (extra_files or {}).items():
            (tmp / name).write_bytes(Path(source).read_bytes())
        write_json(tmp / "manifest.json", {"versions": versions(), **manifest})
    return out

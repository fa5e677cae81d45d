"""The run's record: ``metrics.jsonl`` (one JSON object a line) and the early-stop bookkeeping."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class MetricsLog:
    """Appends lines to ``metrics.jsonl`` on rank 0; every other rank writes nothing."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled = path, enabled

    def start(self, resume_step: int | None) -> None:
        """A fresh run empties the log; a resumed one drops the lines after its checkpoint, so
        the curve of a killed and resumed run equals the uninterrupted one."""
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept: list[str] = []
        if resume_step is not None and self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a line cut by the kill
                    continue
                if record.get("global_step", 0) <= resume_step:
                    kept.append(line)
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a") as file:
                file.write(json.dumps(record) + "\n")


def read_metrics(path: str | Path, kind: str = "step") -> list[dict[str, Any]]:
    """The records of one ``kind`` ("step" or "epoch") of a ``metrics.jsonl``."""
    lines = Path(path).read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("kind") == kind]


@dataclass
class EarlyStop:
    """Tracks the best value of one metric and the epochs since it last improved."""

    patience: int
    mode: str  # "max" or "min"
    best: float | None = None
    epochs_without_improvement: int = 0

    def update(self, value: float) -> bool:
        """Record one epoch's value; True when it is the best so far."""
        if math.isnan(value):
            improved = False
        elif self.best is None:
            improved = True
        else:
            improved = value > self.best if self.mode == "max" else value < self.best
        if improved:
            self.best, self.epochs_without_improvement = value, 0
        else:
            self.epochs_without_improvement += 1
        return improved

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.epochs_without_improvement >= self.patience

"""The profile report: totals, per-module and per-op tables, unsupported ops, JSON."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from torchslim.profile.counter import OpRecord


@dataclass
class CostTotals:
    """Summed cost of a set of op calls (FLOPs = 2 x MACs + the non-MAC FLOPs)."""

    macs: int = 0
    flops: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    calls: int = 0
    params: int = 0

    @property
    def bytes(self) -> int:
        return self.bytes_read + self.bytes_written

    @property
    def arithmetic_intensity(self) -> float:
        """FLOPs per byte moved."""
        return self.flops / self.bytes if self.bytes else 0.0

    def add(self, record: OpRecord) -> None:
        self.calls += 1
        self.params += record.params
        if record.cost is not None:
            self.macs += record.cost.macs
            self.flops += record.cost.flops
            self.bytes_read += record.cost.bytes_read
            self.bytes_written += record.cost.bytes_written

    def to_dict(self) -> dict[str, Any]:
        return {
            "macs": self.macs,
            "flops": self.flops,
            "bytes_read": self.bytes_read,
            "bytes_written": self.bytes_written,
            "bytes": self.bytes,
            "arithmetic_intensity": self.arithmetic_intensity,
            "calls": self.calls,
            "params": self.params,
        }


@dataclass
class ProfileReport:
    """What ``torchslim.profile`` counted for one forward pass."""

    model: str
    records: list[OpRecord]
    params: int
    param_bytes: int
    predicted_peak_activation_bytes: int
    input_shapes: list[tuple[int, ...]]
    measured_peak_activation_bytes: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    module_calls: dict[str, int] = field(default_factory=dict)  # path -> forward runs
    python_calls: int | None = None  # Python and C function calls of one plain forward

    @property
    def total(self) -> CostTotals:
        totals = CostTotals()
        for record in self.records:
            totals.add(record)
        totals.params = self.params  # every parameter, also those no op read
        return totals

    @property
    def unsupported_ops(self) -> dict[str, int]:
        """Ops without a cost rule and how often they ran (their cost is unknown, not zero)."""
        return dict(Counter(r.op for r in self.records if r.cost is None))

    def by_op(self) -> dict[str, CostTotals]:
        """Totals per ATen op name, most FLOPs first."""
        groups: dict[str, CostTotals] = defaultdict(CostTotals)
        for record in self.records:
            groups[record.op].add(record)
        return dict(sorted(groups.items(), key=lambda kv: (-kv[1].flops, -kv[1].bytes)))

    def by_module(self, depth: int | None = None) -> dict[str, CostTotals]:
        """Totals per module path, cut to ``depth`` components ("layer1.0" at depth 2).

        ``calls`` is how often the module's forward ran; ``params`` are the parameters read by
        the module's ops (its own and its children's)."""
        groups: dict[str, CostTotals] = defaultdict(CostTotals)
        for record in self.records:
            path = record.module
            if depth is not None and path:
                path = ".".join(path.split(".")[:depth])
            groups[path].add(record)
        for path, totals in groups.items():
            totals.calls = self.module_calls.get(path, totals.calls)
        return {path or "(model)": totals for path, totals in groups.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "input_shapes": [list(s) for s in self.input_shapes],
            "total": self.total.to_dict(),
            "param_bytes": self.param_bytes,
            "peak_activation_bytes": {
                "predicted": self.predicted_peak_activation_bytes,
                "measured": self.measured_peak_activation_bytes,
            },
            "unsupported_ops": self.unsupported_ops,
            "python_calls": self.python_calls,
            "by_op": {name: t.to_dict() for name, t in self.by_op().items()},
            "by_module": {name: t.to_dict() for name, t in self.by_module().items()},
            **self.extra,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

"""Each op of a model on this machine's roofline, as plain data the report draws without
running any model again (Williams et al., "Roofline", CACM 2009).

The original's roofline is measured with the baseline and kept in ``search.json``; each trial
measures its float module (the one a deploy stage would hand to a runtime: what follows deploy
is a runtime graph that torchslim's op counter cannot see into) and writes ``roofline.json``
beside its manifest, which ``best/`` copies.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

    from torchslim.profile.report import ProfileReport

ROOFLINE_FILE = "roofline.json"
ROUNDS = 3  # per-op times: the median of 3 profiled rounds (one preempted round is ignored)
_HARDWARE_KEYS = ("name", "peak_flops_per_s", "mem_bw_bytes_per_s", "source", "threads")


def measured_roofline(
    model: nn.Module,
    inputs: Sequence[Any],
    threads: int,
    report: ProfileReport | None = None,
    note: str = "",
) -> dict[str, Any]:
    """Per op name: FLOPs, bytes, intensity, bound and the measured seconds of one forward pass
    of ``model`` on ``inputs`` with ``threads`` threads, and this machine's peaks.

    ``report``: the op counts of this model and inputs when already made (not counted twice);
    ``note``: what the module is, when it is not the model that runs (a pre-deploy module).
    """
    from torchslim.evaluate.latency import fixed_threads
    from torchslim.profile import profile
    from torchslim.profile.hardware import this_machine
    from torchslim.profile.roofline import measure_op_times, roofline_rows

    hardware = this_machine(threads=threads)
    with fixed_threads(threads):
        counted = report or profile(model, inputs, measure_memory=False)
        rounds = [measure_op_times(model, inputs, repeats=3) for _ in range(ROUNDS)]
    measured = {op: statistics.median(r.get(op, 0.0) for r in rounds) for op in rounds[0]}
    rows = roofline_rows(counted, hardware, None, measured)
    spec = hardware.to_dict()
    return {
        "hardware": {key: spec[key] for key in _HARDWARE_KEYS},
        "rows": [row.to_dict() for row in rows],
        "flops": int(counted.total.flops),
        "bytes": int(counted.total.bytes),
        "measured_s": sum(measured.values()),
        "note": note,
    }


def placed(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows a log-log roofline can place: some FLOPs, some bytes, a measured time."""
    return [r for r in rows if r["flops"] > 0 and r["bytes"] > 0 and (r["measured_s"] or 0) > 0]


def slowest(rows: list[dict[str, Any]], count: int = 8) -> list[dict[str, Any]]:
    """The ``count`` ops that took the most measured time, slowest first."""
    timed = [r for r in rows if (r["measured_s"] or 0) > 0]
    return sorted(timed, key=lambda r: -r["measured_s"])[:count]

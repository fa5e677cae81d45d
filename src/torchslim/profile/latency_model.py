"""Latency prediction from per-op costs, calibrated on micro-benchmarks of this machine.

Each op class (conv, conv_depthwise, matmul, attention, elementwise, normalization, ...) keeps
the measured time of isolated layers over a grid of generic shapes timed here; an op is predicted
from the efficiency of its nearest micro-benchmarks (see ``ClassFit``). The model being predicted
is never timed for the calibration. A whole model is predicted as the sum over its ops of a fixed
framework overhead per ATen op plus the op's work time, plus an overhead for each module call
(``nn.Module.__call__``) and for each Python or C function call the forward makes (counted with
``sys.setprofile``: a transformers forward makes ten calls per ATen op, a plain CNN two or three).
The three overhead rates are fitted (non-negative least squares) to the time left after the
work estimate on small programs made of overhead (``overhead_programs``), none of them a zoo
model.

A calibration records a probe of the machine (``machine_state``) and whether it can be trusted;
``latency_cache`` keeps trusted calibrations per machine and re-validates them before each use.
"""

from __future__ import annotations

import collections
import copy
import functools
import itertools
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import nnls
from torch import nn

from torchslim.evaluate.latency import measure_latency
from torchslim.profile import machine_state
from torchslim.profile.conv_kernels import onednn_work_factor
from torchslim.profile.counter import CostCounter, OpRecord
from torchslim.profile.machine_state import DRIFT_LIMIT, ProbeReading, Trust, drift, verdict
from torchslim.profile.op_times import KEEP_OUTPUTS, ROTATE_BYTES, OpTimes
from torchslim.profile.overhead_programs import overhead_programs
from torchslim.profile.report import ProfileReport

CALIBRATION_VERSION = 7
WORK_FLOOR = 0.1  # an op's work is at least this share of its time (overheads are estimates)


Sample = tuple[float, float, float]  # (flops, bytes, seconds) of one micro-benchmark


def _features(flops: float, moved: float) -> np.ndarray:
    """Where an op sits: its size (log FLOPs, log bytes) — efficiency depends on both."""
    return np.array([np.log10(flops + 1.0), np.log10(moved + 1.0)])


@dataclass(frozen=True)
class ClassFit:
    """Measured micro-benchmarks of one op class; predicts by interpolating their efficiency.

    An op's time is the class's fixed cost (``fixed_s``: what its smallest micro-benchmark took,
    e.g. creating a oneDNN primitive) plus its work (FLOPs, or bytes for ops without FLOPs) times
    the marginal seconds per unit of work of the nearest micro-benchmarks in (log FLOPs, log
    bytes), inverse-distance weighted: small convs run far below peak, large ones near it, and
    the samples say by how much. Without the fixed cost, an op smaller than the samples would be
    predicted as a proportional share of their time, far too little.
    """

    samples: list[Sample]
    neighbours: int = 3
    fixed_s: float = 0.0

    def _scaled(self, seconds: float, ratio: float) -> float:
        """A sample's time for ``ratio`` times its work: fixed cost + scaled marginal time. A
        sample that is (nearly) all fixed cost says nothing about the work: its time stands."""
        marginal = seconds - self.fixed_s
        if marginal <= WORK_FLOOR * seconds:
            return seconds
        return self.fixed_s + marginal * ratio

    def predict(self, flops: float, moved: float) -> float:
        points = np.array([_features(f, b) for f, b, _ in self.samples])
        distance = np.linalg.norm(points - _features(flops, moved), axis=1)
        nearest = np.argsort(distance)[: self.neighbours]
        weights = 1.0 / (distance[nearest] + 1e-3)
        estimates = []
        for i in nearest:
            f, b, seconds = self.samples[i]
            if flops > 0 and f > 0:
                estimates.append(self._scaled(seconds, flops / f))
            elif b > 0:
                estimates.append(self._scaled(seconds, max(moved, 1.0) / b))
            else:
                estimates.append(seconds)
        return float(np.dot(weights, estimates) / weights.sum())

    def leave_one_out_error(self) -> float:
        """Median relative error predicting each sample from the others."""
        if len(self.samples) < 2:
            return 0.0
        errors = []
        for i, (f, b, seconds) in enumerate(self.samples):
            rest = self.samples[:i] + self.samples[i + 1 :]
            others = ClassFit(rest, self.neighbours, self.fixed_s)
            errors.append(abs(others.predict(f, b) - seconds) / seconds)
        return float(np.median(errors))

    @classmethod
    def of(cls, samples: list[Sample]) -> ClassFit:
        """A fit whose fixed cost is the time of its smallest (fastest) micro-benchmark."""
        return cls(samples, fixed_s=min(seconds for _, _, seconds in samples))


@dataclass(frozen=True)
class LatencyModel:
    """Per-class fits of work time; the framework overhead of one ATen op, of one module call and
    of one Python/C function call; how many calls an op and a module call make where calls were
    not counted (a profile on ``meta``); the probe of the machine taken when it was calibrated."""

    classes: dict[str, ClassFit]
    module_call_s: float
    threads: int
    device: str
    op_overhead_s: float = 0.0
    probe: ProbeReading | None = None
    trust: Trust = field(default_factory=lambda: Trust(True))
    python_call_s: float = 0.0
    calls_per_op: float = 0.0
    calls_per_module_call: float = 0.0
    # with a table: seconds per module call, per Python call, per byte written (see with_table)
    table_overheads: tuple[float, float, float] = (0.0, 0.0, 0.0)
    written_byte_s: float = 0.0
    table: OpTimes | None = field(default=None, repr=False, compare=False)

    def with_table(self, table: OpTimes) -> LatencyModel:
        """This model predicting each op that can be replayed by its time in ``table`` (the op's
        own dispatch included), plus the module-call and Python-call rates fitted with the same
        table; the class fits answer only for ops the table cannot replay. Replayed alone, an op
        writes into memory its previous call just freed; in a forward each op writes fresh
        activations (page faults, cache misses), priced per byte written."""
        module_call_s, python_call_s, written_byte_s = self.table_overheads
        return replace(
            self,
            table=table,
            module_call_s=module_call_s,
            python_call_s=python_call_s,
            written_byte_s=written_byte_s,
        )

    def predict_op(self, record: OpRecord) -> float:
        """Overhead plus work; an op without a cost rule costs its overhead only."""
        if self.table is not None:
            seconds = self.table(record.call)
            if seconds is not None:
                return seconds
        if record.cost is None:
            return self.op_overhead_s + self.classes["view"].predict(0, 0)
        fit = self.classes.get(record.op_class) or self.classes["elementwise"]
        flops: float = record.cost.flops
        if record.op_class == "conv" and self.device == "cpu" and record.dtype == "float32":
            flops *= _conv_work_factor(record, self.threads)
        return self.op_overhead_s + fit.predict(flops, record.cost.bytes)

    def predict(
        self, records: list[OpRecord], module_calls: int, python_calls: int | None = None
    ) -> float:
        """Predicted seconds of one forward pass; ``module_calls`` counts every module forward
        that ran (the model's own included), ``python_calls`` the Python and C function calls
        (None: estimated from the ops and module calls)."""
        if python_calls is None:
            python_calls = round(
                self.calls_per_op * len(records) + self.calls_per_module_call * module_calls
            )
        return (
            sum(self.predict_op(r) for r in records)
            + module_calls * self.module_call_s
            + python_calls * self.python_call_s
            + written_bytes(records) * self.written_byte_s
        )

    def predict_report(self, report: ProfileReport) -> float:
        """Predicted seconds of the forward pass ``report`` counted."""
        if self.table is not None:
            self.table.measure(record.call for record in report.records)
            self.table.save()
        return self.predict(report.records, sum(report.module_calls.values()), report.python_calls)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": CALIBRATION_VERSION,
            "classes": {name: asdict(fit) for name, fit in self.classes.items()},
            "leave_one_out_error": {n: f.leave_one_out_error() for n, f in self.classes.items()},
            "module_call_s": self.module_call_s,
            "op_overhead_s": self.op_overhead_s,
            "python_call_s": self.python_call_s,
            "calls_per_op": self.calls_per_op,
            "calls_per_module_call": self.calls_per_module_call,
            "table_overheads": list(self.table_overheads),
            "threads": self.threads,
            "device": self.device,
            "probe": None if self.probe is None else self.probe.to_dict(),
            "trust": asdict(self.trust),
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LatencyModel:
        probe = values.get("probe")
        return cls(
            classes={
                n: ClassFit([tuple(x) for x in f["samples"]], f["neighbours"], f["fixed_s"])
                for n, f in values["classes"].items()
            },
            module_call_s=values["module_call_s"],
            threads=values["threads"],
            device=values["device"],
            op_overhead_s=values.get("op_overhead_s", 0.0),
            probe=None if probe is None else ProbeReading.from_dict(probe),
            trust=Trust(**values.get("trust", {"trusted": True})),
            python_call_s=values.get("python_call_s", 0.0),
            calls_per_op=values.get("calls_per_op", 0.0),
            calls_per_module_call=values.get("calls_per_module_call", 0.0),
            table_overheads=_three_rates(values.get("table_overheads", (0.0, 0.0, 0.0))),
        )


def _three_rates(values: Any) -> tuple[float, float, float]:
    """The table's module-call, Python-call and written-byte rates (ValueError otherwise)."""
    module_call_s, python_call_s, written_byte_s = (float(v) for v in values)
    return module_call_s, python_call_s, written_byte_s


def written_bytes(records: list[OpRecord]) -> int:
    """Bytes the ops of a forward write (views write nothing)."""
    return sum(r.cost.bytes_written for r in records if r.cost is not None and r.op_class != "view")


def _conv_work_factor(record: OpRecord, threads: int) -> float:
    """The channel padding a conv pays on the kernel torch picks (``conv_kernels``); the
    calibration's conv samples have channel counts the padding leaves as they are."""
    if len(record.input_shapes) < 2 or len(record.input_shapes[0]) != 4 or record.cost is None:
        return 1.0
    image, weight = record.input_shapes[0], record.input_shapes[1]
    per_output = image[0] * weight[0] * weight[1] * weight[2] * weight[3]
    strided = record.cost.macs < per_output * image[2] * image[3]  # fewer outputs than inputs
    return onednn_work_factor(image, weight, threads, strided)


Case = tuple[Callable[..., Any], tuple[Any, ...]]


def _cases(device: torch.device) -> Iterator[Case]:
    """Isolated layers spanning small to large shapes of every class.

    Layers are called as nn.Modules where models use modules (conv, linear, norms, activations),
    so the intercepts include the module call itself; residual adds and attention are functional.
    """

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=device)

    def layer(module: nn.Module) -> nn.Module:
        return module.to(device).eval()

    yield from _tiny_cases(randn, layer)
    for m in (1, 16, 128, 512):
        for k, n in ((64, 64), (256, 256), (256, 1024), (1024, 256), (1024, 1024), (768, 3072)):
            yield layer(nn.Linear(k, n)), (randn(m, k),)
    for batch in (1, 16):
        for c_in, c_out, hw in (
            (1, 16, 28),
            (16, 16, 28),
            (32, 32, 14),
            (64, 64, 7),
            (32, 64, 56),
            (64, 128, 28),
            (128, 256, 14),
            (256, 512, 7),
        ):
            x = randn(batch, c_in, hw, hw)
            for k, bias in ((1, False), (3, True), (3, False)):
                yield layer(nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=bias)), (x,)
            yield layer(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False)), (x,)
            yield layer(nn.BatchNorm2d(c_in)), (x,)
            yield layer(nn.ReLU()), (x,)
            yield layer(nn.MaxPool2d(2)), (x,)
            yield torch.add, (x, x)
        for channels, hw in ((32, 112), (96, 56), (144, 28), (240, 14), (480, 14), (672, 7)):
            for k in (3, 5):
                conv = nn.Conv2d(channels, channels, k, padding=k // 2, groups=channels, bias=False)
                yield layer(conv), (randn(batch, channels, hw, hw),)
    for b, h, e in ((1, 4, 32), (1, 12, 32), (4, 12, 64), (1, 9, 64), (8, 8, 64)):
        for seq in (16, 128, 512):
            q = randn(b, h, seq, e)
            yield F.scaled_dot_product_attention, (q, randn(b, h, seq, e), randn(b, h, seq, e))
    for numel in (1_000, 30_000, 300_000, 3_000_000):
        x = randn(numel // 100, 100)
        yield torch.add, (x, x)
        yield lambda t: t * 0.5 + 1.0, (x,)
        yield layer(nn.GELU()), (x,)
        yield layer(nn.SiLU()), (x,)
        yield layer(nn.Softmax(-1)), (x,)
        yield layer(nn.LayerNorm(100)), (x,)
        yield lambda t: t.mean(-1), (x,)
        yield lambda t: t.pow(2).mean(-1, keepdim=True), (x,)
        yield layer(nn.AdaptiveAvgPool2d(1)), (randn(4, numel // 400 + 1, 10, 10),)
        yield layer(nn.Embedding(50_000, 100)), (torch.randint(0, 50_000, (numel // 100,)),)
        yield lambda t: t.t().contiguous(), (x,)
        yield lambda t: torch.cat([t, t]), (x,)
    for numel in (100, 10_000, 1_000_000):
        x = randn(numel)
        yield lambda t: t.view(-1, 10).transpose(0, 1), (x,)


def _tiny_cases(
    randn: Callable[..., torch.Tensor], layer: Callable[[nn.Module], nn.Module]
) -> Iterator[Case]:
    """The smallest op of each class: its time is the class's fixed cost (``ClassFit.of``)."""
    x = randn(1, 2, 4, 4)
    yield layer(nn.Linear(8, 8)), (randn(1, 8),)
    yield layer(nn.Conv2d(2, 2, 1, bias=False)), (x,)
    yield layer(nn.Conv2d(2, 2, 3, padding=1, bias=False)), (x,)
    yield layer(nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)), (randn(1, 8, 4, 4),)
    yield layer(nn.BatchNorm2d(2)), (x,)
    yield layer(nn.LayerNorm(8)), (randn(4, 8),)
    yield layer(nn.MaxPool2d(2)), (x,)
    yield layer(nn.ReLU()), (x,)
    yield torch.add, (x, x)
    yield lambda t: t.mean(-1), (x,)
    yield layer(nn.Softmax(-1)), (x,)
    q = randn(1, 1, 4, 8)
    yield F.scaled_dot_product_attention, (q, q, q)


def _record_case(fn: Callable[..., Any], args: tuple[Any, ...]) -> list[OpRecord]:
    counter = CostCounter(nn.Module())
    with torch.no_grad(), counter:
        fn(*args)
    return counter.records


def _module_call_seconds(device: torch.device) -> float:
    """Cost of one module call beyond its children: timed on 50 nested Sequentials around an
    Identity, divided."""
    chain: nn.Module = nn.Identity()
    for _ in range(50):
        chain = nn.Sequential(chain)
    chain = chain.to(device)
    x = torch.zeros(1, device=device)
    return measure_latency(lambda: chain(x), repeats=30).median / 1e3 / 51


def _op_overhead_seconds(device: torch.device, ops: int = 200) -> float:
    """Framework overhead of one ATen op called from Python (argument parsing, dispatch, output
    allocation): a chain of ``ops`` additions of 4-element tensors, timed and divided."""
    tiny = torch.ones(4, device=device)

    def chain() -> None:
        for _ in range(ops):
            torch.add(tiny, tiny)

    return measure_latency(chain, repeats=30).median / 1e3 / ops


@dataclass(frozen=True)
class _Overheads:
    op_s: float
    module_call_s: float

    def work_seconds(self, seconds: float, ops: int, is_module: bool) -> float:
        """A micro-benchmark's time less its framework overhead (never below WORK_FLOOR of it)."""
        overhead = ops * self.op_s + (self.module_call_s if is_module else 0.0)
        return max(seconds - overhead, WORK_FLOOR * seconds)


def _cold_weights(fn: Callable[..., Any], args: tuple[Any, ...]) -> Callable[[], Any]:
    """A call of ``fn(*args)`` that reads its weights from beyond the L2 cache, as each layer of
    a model does once per forward: the call cycles through copies of the layer. Timed on one
    hot copy, a Linear at batch 1 ran twice as fast as in a model (measured: 1x576x1536,
    131 us hot, 282 us rotating). The last few outputs are kept alive, so that each call writes
    to memory the previous calls did not just free (as a model's ops write new activations)."""
    call: Callable[[], Any] = functools.partial(fn, *args)
    weight_bytes = 0
    if isinstance(fn, nn.Module):
        weight_bytes = sum(p.numel() * p.element_size() for p in fn.parameters())
    if weight_bytes:
        copies = [fn, *(copy.deepcopy(fn) for _ in range(min(31, ROTATE_BYTES // weight_bytes)))]
        turn = itertools.cycle(copies)
        call = lambda: next(turn)(*args)  # noqa: E731
    recent: collections.deque[Any] = collections.deque(maxlen=KEEP_OUTPUTS)
    return lambda: recent.append(call())


def _time_cases(
    device: torch.device, threads: int | None, overheads: _Overheads
) -> tuple[dict[str, list[Sample]], float]:
    """Work samples per class, and the median spread of the cases: interquartile range / median,
    as the machine probe's (``machine_state.SPREAD_LIMIT``), not the wider (p90 - min) / median.
    The cases rotate cold weight copies, which spreads their calls even on a quiet machine: on
    this project's 2-core VM, with nothing else running, (p90 - min) / median read 32-37 % and
    the IQR 27 %."""
    rows: dict[str, list[Sample]] = {}
    spreads = []
    for fn, args in _cases(device):
        records = _record_case(fn, args)
        costed = [(r, r.cost) for r in records if r.cost is not None]
        main = max(costed, key=lambda rc: (rc[1].flops, rc[1].bytes))[0]
        stats = measure_latency(
            _cold_weights(fn, args),
            warmup=2,
            repeats=7,
            threads=threads,
            device=device,
            max_seconds=1.0,
        )
        spreads.append(stats.iqr / stats.median)
        work = overheads.work_seconds(stats.median / 1e3, len(records), isinstance(fn, nn.Module))
        flops = sum(c.flops for _, c in costed)
        moved = sum(c.bytes for _, c in costed)
        cls = "view" if all(r.op_class == "view" for r in records) else main.op_class
        rows.setdefault(cls, []).append((float(flops), float(moved), work))
    return rows, float(np.median(spreads))


@dataclass(frozen=True)
class _OverheadFit:
    op_s: float
    module_call_s: float
    python_call_s: float
    calls_per_op: float
    calls_per_module_call: float
    table_module_call_s: float
    table_python_call_s: float
    table_written_byte_s: float


def _fit_overheads(
    classes: dict[str, ClassFit], device: torch.device, threads: int | None, table: OpTimes
) -> _OverheadFit:
    """Overhead rates that explain the overhead programs' measured time beyond their work: the
    work estimated by the class fits (rates per op, module call and Python call), and the work
    replayed in ``table`` (which includes each op's own dispatch: rates per module and Python
    call)."""
    from torchslim.profile import profile

    work_only = LatencyModel(classes, 0.0, threads or 1, str(device))
    replayed = replace(work_only, table=table)
    features, left, left_replayed = [], [], []
    for _, model, inputs in overhead_programs(device):
        report = profile(model, inputs, measure_memory=False, count_calls=True)
        run: Callable[[], Any] = functools.partial(model, *inputs)
        timing = measure_latency(run, warmup=5, repeats=50, threads=threads, device=device)
        seconds = timing.median / 1e3
        ops, modules = len(report.records), sum(report.module_calls.values())
        calls = report.python_calls or 0
        features.append([ops, modules, calls, written_bytes(report.records)])
        left.append(max(seconds - work_only.predict_report(report), 0.0))
        left_replayed.append(max(seconds - replayed.predict_report(report), 0.0))
    counts = np.array(features, dtype=float)
    rates = nnls(counts[:, :3], np.array(left))[0]
    op_s, module_call_s, python_call_s = (float(r) for r in rates)
    per = nnls(counts[:, :2], counts[:, 2])[0]  # calls ~ ops and module calls
    table_rates = nnls(counts[:, 1:], np.array(left_replayed))[0]
    return _OverheadFit(
        op_s,
        module_call_s,
        python_call_s,
        float(per[0]),
        float(per[1]),
        float(table_rates[0]),
        float(table_rates[1]),
        float(table_rates[2]),
    )


def calibrate(threads: int | None = None, device: str | torch.device = "cpu") -> LatencyModel:
    """Fit the per-class latency model on micro-benchmarks of this machine (~30-60 s on CPU).

    The machine is probed before and after; the model's ``trust`` says whether the calibration
    ran on a quiet machine (low spread and load, no drift between the two probes).
    """
    device = torch.device(device)
    count = threads or torch.get_num_threads()
    before = machine_state.probe_machine(count, str(device))
    overheads = _Overheads(_op_overhead_seconds(device), _module_call_seconds(device))
    rows, case_spread = _time_cases(device, threads, overheads)
    classes = {name: ClassFit.of(class_rows) for name, class_rows in rows.items()}
    fitted = _fit_overheads(classes, device, threads, OpTimes(count, str(device)))
    after = machine_state.probe_machine(count, str(device))
    trust = verdict(before, count)
    if case_spread > machine_state.SPREAD_LIMIT:
        trust = trust.and_(Trust(False, f"calibration timings spread {case_spread:.0%}"))
    moved = drift(before, after)
    if moved > DRIFT_LIMIT:
        trust = trust.and_(Trust(False, f"machine drifted {moved:.0%} while calibrating"))
    return LatencyModel(
        classes=classes,
        module_call_s=fitted.module_call_s,
        threads=count,
        device=str(device),
        op_overhead_s=fitted.op_s,
        probe=before,
        trust=trust,
        python_call_s=fitted.python_call_s,
        calls_per_op=fitted.calls_per_op,
        calls_per_module_call=fitted.calls_per_module_call,
        table_overheads=(
            fitted.table_module_call_s,
            fitted.table_python_call_s,
            fitted.table_written_byte_s,
        ),
    )

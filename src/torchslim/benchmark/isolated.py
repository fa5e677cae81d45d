"""Compare variants each running in its own worker process, interleaved call by call.

Runtimes that share a process disturb each other: torch's OpenMP pool, the separate OpenMP
pool of inductor-compiled code, OpenVINO's TBB arena and ONNX Runtime's threads all keep worker
threads that can spin or hold cores after a call, so whichever variant runs next pays for them.
On a 2-core machine that reordered the INT8 backends (OpenVINO measured 1.6x slower next to an
inductor-compiled model than alone). A user runs one model per process; :func:`compare_isolated`
measures that: every :class:`WorkerVariant` is built in a fresh ``spawn`` process, warmed up, and
then timed *inside* that process, one call per turn, the turns interleaved in a shuffled order
exactly as :func:`torchslim.benchmark.compare` does, so machine drift still spreads over all.
Plain callables may be mixed in; they run in this (otherwise idle) process.
"""

from __future__ import annotations

import gc
import importlib
import itertools
import multiprocessing
import random
import signal
import statistics
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import torch

from torchslim._machine import machine_facts
from torchslim.benchmark.config import BenchmarkConfig
from torchslim.benchmark.harness import Variant, _ratio, check_baseline, gc_paused, timed_rounds
from torchslim.benchmark.result import BenchmarkResult, VariantResult
from torchslim.errors import TorchslimError
from torchslim.evaluate.latency import fixed_threads, time_call


class WorkerError(TorchslimError):
    """A worker process could not build its variant, crashed, or stopped answering."""


@dataclass(frozen=True)
class WorkerVariant:
    """A variant built in its own process: ``factory(**kwargs)`` returns the callable to time.

    Attributes:
        factory: ``"package.module:function"``, importable in a fresh interpreter (a benchmark
            script's functions qualify when its folder is on ``sys.path``).
        kwargs: picklable keyword arguments (paths, names, sizes; not models).
    """

    factory: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def build(self) -> Variant:
        """Import the factory and call it (in the worker)."""
        module_name, _, function_name = self.factory.partition(":")
        if not function_name:
            raise ValueError(f"factory must be 'module:function', got {self.factory!r}")
        factory = getattr(importlib.import_module(module_name), function_name)
        return factory(**self.kwargs)


@dataclass(frozen=True)
class Isolation:
    """How :func:`compare_isolated` times its workers.

    Attributes:
        settle_s: idle seconds before each timed call: the runtime that ran last keeps its
            worker threads spinning for a while after its call (OpenVINO's TBB arena, OpenMP
            pools), and in another process they would steal the cores of the next call.
        lead_calls: untimed calls a variant runs right before each timed one, so what is timed
            is the latency of back-to-back calls (warm caches, awake threads and clocks), as in
            a serving loop, not the first call after an idle pause: after 20 ms idle a batch-1
            call of a small CNN took twice as long here, more so with two threads than one.
        instances: worker processes per variant; the timed calls rotate over them and their
            samples are pooled. One process instance of a runtime can be steadily 5-20 % faster
            or slower than the next (thread placement, memory layout): measured on the same
            OpenVINO model in 5 fresh processes, medians from 1.63 to 1.89 ms. Several
            instances average that luck out of a comparison.
    """

    settle_s: float = 0.02
    lead_calls: int = 2
    instances: int = 1

    def __post_init__(self) -> None:
        for name, low in (("lead_calls", 0), ("instances", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"Isolation.{name} must be an integer >= {low}, got {value!r}")
        if isinstance(self.settle_s, bool) or not 0 <= self.settle_s <= 1:
            raise ValueError(f"Isolation.settle_s must be in [0, 1] s, got {self.settle_s!r}")


def compare_isolated(
    variants: Mapping[str, WorkerVariant | Variant],
    baseline: str,
    config: BenchmarkConfig | None = None,
    isolation: Isolation | None = None,
    start_timeout_s: float = 600.0,
) -> BenchmarkResult:
    """Time every variant in its own process(es), interleaved; like :func:`compare` otherwise.

    Workers are started one after another (so builds do not compete), each warmed up with
    ``config.warmup`` calls in its process with ``config.threads`` torch threads; ``isolation``
    sets the idle gap and untimed lead calls before each timed call and the processes per
    variant (:class:`Isolation`). A variant whose worker fails to build is left out and listed
    in ``result.skipped`` with the error; it never stops the others.

    Raises:
        ValueError: no variants, or ``baseline`` is not one of them.
        WorkerError: the baseline could not be built, or a worker died mid-measurement.
    """
    check_baseline(variants, baseline)
    config, isolation = config or BenchmarkConfig(), isolation or Isolation()
    settle_s, lead_calls = isolation.settle_s, isolation.lead_calls
    rng = random.Random(config.seed)
    skipped: dict[str, str] = {}
    with _workers(variants, config, (isolation.instances, start_timeout_s), skipped) as timers:
        if baseline not in timers:
            raise WorkerError(f"the baseline {baseline!r} did not start: {skipped[baseline]}")
        with fixed_threads(config.threads), torch.inference_mode(), gc_paused():
            threads = torch.get_num_threads()
            timer = lambda name: _settled(timers[name], settle_s, lead_calls)  # noqa: E731
            samples, call_order = timed_rounds(list(timers), timer, config, rng)
    baseline_median = statistics.median(samples[baseline])
    results = {
        name: VariantResult(name, samples[name], _ratio(baseline_median, statistics.median(s)))
        for name, s in samples.items()
    }
    return BenchmarkResult(
        baseline=baseline,
        variants=results,
        config=config,
        threads=threads,
        machine={
            **machine_facts(),
            "isolation": f"{isolation.instances} worker process(es) per WorkerVariant",
            **asdict(isolation),
        },
        timestamp_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        call_order=call_order,
        skipped=skipped,
    )


@contextmanager
def _workers(
    variants: Mapping[str, WorkerVariant | Variant],
    config: BenchmarkConfig,
    starting: tuple[int, float],
    skipped: dict[str, str],
) -> Iterator[dict[str, Callable[[int], float]]]:
    """name -> a timer returning one call's milliseconds (``starting``: worker instances per
    variant, and seconds each may take to start); the workers stop on exit."""
    instances, start_timeout_s = starting
    context = multiprocessing.get_context("spawn")
    processes: list[tuple[Any, Connection]] = []
    timers: dict[str, Callable[[int], float]] = {}
    try:
        for name, variant in variants.items():
            if not isinstance(variant, WorkerVariant):
                timers[name] = _local_timer(variant, config)
                continue
            started: list[Callable[[int], float]] = []
            for _ in range(instances):
                parent, child = context.Pipe()
                process = context.Process(
                    target=_worker_main, args=(child, variant, config), name=f"bench-{name}"
                )
                with _sigint_ignored():  # Ctrl-C is the parent's to handle: it stops the workers
                    process.start()
                child.close()
                processes.append((process, parent))
                status, detail = _receive(parent, start_timeout_s, name)
                if status != "ready":
                    skipped[name] = detail
                    break
                started.append(_remote_timer(parent, name))
            if name not in skipped:
                timers[name] = _rotating(started)
        yield timers
    except KeyboardInterrupt:
        for process, _ in processes:  # no graceful stop: the user is waiting
            process.kill()
        raise
    finally:
        for process, connection in processes:
            with suppress(BrokenPipeError, OSError):
                connection.send(("stop", None))
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored while a worker starts: a spawned process inherits that, and Python keeps
    an inherited ignore, so a terminal's Ctrl-C (sent to the whole process group) reaches only
    the parent instead of printing a traceback from every worker."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may change signal handlers
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _rotating(timers: list[Callable[[int], float]]) -> Callable[[int], float]:
    """One timer that hands each call to the next of ``timers`` in turn."""
    turn = itertools.cycle(timers)
    return lambda lead_calls: next(turn)(lead_calls)


def _settled(timer: Callable[[int], float], seconds: float, lead_calls: int) -> float:
    time.sleep(seconds)
    return timer(lead_calls)


def _lead_then_time(call: Callable[[], Any], lead_calls: int, device: torch.device) -> float:
    """``lead_calls`` untimed calls, then the milliseconds of one timed call."""
    for _ in range(lead_calls):
        call()
    return time_call(call, device)


def _local_timer(variant: Variant, config: BenchmarkConfig) -> Callable[[int], float]:
    with fixed_threads(config.threads), torch.inference_mode():
        for _ in range(config.warmup):
            variant()
    return lambda lead_calls: _lead_then_time(variant, lead_calls, config.torch_device)


def _remote_timer(connection: Connection, name: str) -> Callable[[int], float]:
    def timer(lead_calls: int) -> float:
        connection.send(("time", lead_calls))
        status, value = _receive(connection, 600.0, name)
        if status != "ms":
            raise WorkerError(f"benchmark worker {name!r} failed while timing: {value}")
        return float(value)

    return timer


def _receive(connection: Connection, timeout_s: float, name: str) -> tuple[str, Any]:
    try:
        if not connection.poll(timeout_s):
            return "error", f"worker {name!r} gave no answer within {timeout_s:.0f} s"
        return connection.recv()
    except (EOFError, OSError) as error:
        return "error", f"worker {name!r} died ({type(error).__name__})"


def _worker_main(connection: Connection, variant: WorkerVariant, config: BenchmarkConfig) -> None:
    """Build, warm up, then answer each ``time`` request (its lead-call count) with one timed
    call until ``stop``."""
    try:
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        with torch.inference_mode():
            call = variant.build()
            for _ in range(config.warmup):
                call()
    except BaseException as error:  # reported to the parent, which lists the variant as skipped
        detail = "".join(traceback.format_exception_only(type(error), error)).strip()
        connection.send(("error", f"build failed: {detail[:500]}"))
        return
    connection.send(("ready", None))
    gc.collect()
    gc.disable()
    with torch.inference_mode():
        while True:
            command, lead_calls = connection.recv()
            if command == "stop":
                return
            try:
                connection.send(("ms", _lead_then_time(call, lead_calls, config.torch_device)))
            except BaseException as error:  # the parent raises WorkerError with this text
                connection.send(("error", f"{type(error).__name__}: {str(error)[:300]}"))
                return


def save_inputs(inputs: tuple[torch.Tensor, ...], path: Path) -> str:
    """Write model inputs for the workers (safetensors: ``input0``, ``input1``, ...)."""
    from torchslim._io import save_tensors

    save_tensors(path, {f"input{i}": x for i, x in enumerate(inputs)})
    return str(path)


def load_inputs(path: str) -> tuple[torch.Tensor, ...]:
    """The inputs :func:`save_inputs` wrote, in order (in a worker factory)."""
    from torchslim._io import load_tensors

    tensors = load_tensors(path)
    return tuple(tensors[f"input{i}"] for i in range(len(tensors)))


def compare_on_inputs(
    variants: Mapping[str, WorkerVariant | Variant],
    inputs: tuple[torch.Tensor, ...],
    baseline: str,
    config: BenchmarkConfig | None = None,
    isolation: Isolation | None = None,
) -> BenchmarkResult:
    """:func:`compare_isolated` on one set of inputs: they are saved once, and every
    :class:`WorkerVariant` gets their path as its ``inputs`` keyword (its factory loads them
    with :func:`load_inputs`); plain callables are passed through unchanged."""
    with tempfile.TemporaryDirectory(prefix="torchslim-inputs-") as tmp:
        path = save_inputs(inputs, Path(tmp) / "inputs.safetensors")
        given = {
            name: replace(v, kwargs={**v.kwargs, "inputs": path})
            if isinstance(v, WorkerVariant)
            else v
            for name, v in variants.items()
        }
        return compare_isolated(given, baseline, config, isolation)


def zoo_model_call(name: str, batch_size: int, weights: str | None = None) -> Variant:
    """Factory for :class:`WorkerVariant`: zoo model ``name`` in fp32 eager on its example
    inputs of ``batch_size`` (``weights``: an optional safetensors file to load into it)."""
    import torchslim.zoo
    from torchslim._hf_directory import load_weights

    entry = torchslim.zoo.get(name)
    model = entry.load().eval()
    if weights is not None:
        model.load_state_dict(load_weights(weights))
    inputs = entry.example_inputs(batch_size)
    return lambda: model(*inputs)

"""compare_isolated: each WorkerVariant runs and is timed in its own process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from torchslim.benchmark import (
    BenchmarkConfig,
    Isolation,
    WorkerVariant,
    compare_isolated,
    compare_on_inputs,
    load_inputs,
)
from torchslim.benchmark.isolated import zoo_model_call

QUICK = BenchmarkConfig(warmup=1, rounds=4, threads=1, max_seconds=5.0)


def not_in_process(parent_pid: int) -> object:
    """Factory that refuses to build in the parent process (proves it ran in a worker)."""
    if os.getpid() == parent_pid:
        raise AssertionError("built in the parent process")
    return os.getpid


def failing_factory() -> object:
    raise RuntimeError("cannot build this variant")


def test_workers_run_in_their_own_processes_interleaved_with_local_variants() -> None:
    model = torch.nn.Linear(8, 8)
    x = torch.randn(4, 8)
    variants = {
        "local": lambda: model(x),
        "worker": WorkerVariant("test_isolated:not_in_process", {"parent_pid": os.getpid()}),
        "zoo": WorkerVariant(
            "torchslim.benchmark.isolated:zoo_model_call",
            {
                "name": "tiny-cnn",
                "batch_size": 2,
            },
        ),
    }
    result = compare_isolated(variants, "local", QUICK)
    assert set(result.variants) == {"local", "worker", "zoo"}
    assert all(len(v.samples_ms) == 4 for v in result.variants.values())
    assert all(s > 0 for v in result.variants.values() for s in v.samples_ms)
    # interleaved: no variant runs all its calls in one block
    assert result.call_order[:3] != [result.call_order[0]] * 3
    assert result.variants["local"].speedup == 1.0
    assert result.machine["isolation"].startswith("1 worker process")


def test_a_variant_that_fails_to_build_is_skipped_with_its_error() -> None:
    variants = {
        "local": lambda: None,
        "broken": WorkerVariant("test_isolated:failing_factory"),
    }
    result = compare_isolated(variants, "local", QUICK)
    assert set(result.variants) == {"local"}
    assert "cannot build this variant" in result.skipped["broken"]


def test_unknown_baseline_is_refused() -> None:
    with pytest.raises(ValueError, match="baseline 'eagre'"):
        compare_isolated({"eager": lambda: None}, "eagre", QUICK)


def test_zoo_factory_builds_the_eager_model() -> None:
    call = zoo_model_call("tiny-cnn", 3)
    assert call().shape[0] == 3


def sum_of_inputs(inputs: str) -> object:
    """Factory: loads the saved inputs; refuses any that are not the ones given."""
    (x,) = load_inputs(inputs)
    if not torch.equal(x, torch.arange(6.0).reshape(2, 3)):
        raise AssertionError("wrong inputs reached the worker")
    return lambda: x.sum()


def test_compare_on_inputs_hands_the_saved_inputs_to_every_worker() -> None:
    x = torch.arange(6.0).reshape(2, 3)
    variants = {"local": lambda: x.sum(), "worker": WorkerVariant("test_isolated:sum_of_inputs")}
    result = compare_on_inputs(variants, (x,), "local", QUICK)
    assert set(result.variants) == {"local", "worker"} and not result.skipped


def counting_call(log: str) -> object:
    """Factory: a callable that appends one line to ``log`` per call."""

    def call() -> None:
        with open(log, "a") as file:
            file.write("x\n")

    return call


def test_each_timed_call_follows_its_lead_calls(tmp_path: Path) -> None:
    log = str(tmp_path / "calls.log")
    local_calls: list[int] = []
    variants = {
        "local": lambda: local_calls.append(1),
        "worker": WorkerVariant("test_isolated:counting_call", {"log": log}),
    }
    result = compare_isolated(variants, "local", QUICK, Isolation(settle_s=0.0, lead_calls=2))
    # warm-up once, then per round: 2 untimed lead calls + the timed one
    assert len(local_calls) == 1 + 4 * 3
    with open(log) as file:
        assert len(file.readlines()) == 1 + 4 * 3
    assert result.machine["lead_calls"] == 2


def test_instances_start_several_workers_per_variant_and_rotate_over_them(
    tmp_path: Path,
) -> None:
    log = str(tmp_path / "calls.log")
    variants = {
        "local": lambda: None,
        "worker": WorkerVariant("test_isolated:counting_pid", {"log": log}),
    }
    isolation = Isolation(settle_s=0.0, lead_calls=0, instances=2)
    result = compare_isolated(variants, "local", QUICK, isolation)
    assert len(result.variants["worker"].samples_ms) == 4
    with open(log) as file:
        pids = [int(line) for line in file]
    # each of the 2 workers warmed up once, then the 4 timed calls alternated between them
    assert len(set(pids)) == 2 and len(pids) == 2 + 4
    timed = pids[2:]
    assert timed[0] != timed[1] and timed[0] == timed[2] and timed[1] == timed[3]
    assert result.machine["instances"] == 2


def counting_pid(log: str) -> object:
    """Factory: a callable that appends its process id to ``log`` per call."""

    def call() -> None:
        with open(log, "a") as file:
            file.write(f"{os.getpid()}\n")

    return call


def test_bad_isolation_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="lead_calls must be an integer >= 0"):
        Isolation(lead_calls=-1)
    with pytest.raises(ValueError, match="instances must be an integer >= 1"):
        Isolation(instances=0)
    with pytest.raises(ValueError, match="settle_s"):
        Isolation(settle_s=5.0)

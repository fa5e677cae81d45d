import itertools
import json
import math
import time
from datetime import datetime

import pytest
import torch

from torchslim.benchmark import BenchmarkConfig, compare, max_abs_diff, write_result_json

QUICK = BenchmarkConfig(warmup=1, rounds=12, max_seconds=5.0, seed=3)


def busy(units: int) -> int:
    """Pure-Python work whose cost is proportional to ``units`` (no threads, no allocator)."""
    total = 0
    for _ in range(units):
        total += sum(range(20_000))
    return total


def recording_variants(names: list[str], calls: list[str]) -> dict[str, object]:
    def variant(name: str):
        return lambda: calls.append(name)

    return {name: variant(name) for name in names}


def test_variants_are_interleaved_in_a_shuffled_order():
    calls: list[str] = []
    names = ["a", "b", "c"]
    result = compare(recording_variants(names, calls), baseline="a", config=QUICK)

    timed = calls[QUICK.warmup * len(names) :]
    assert timed == result.call_order
    assert len(timed) == QUICK.rounds * len(names)
    assert all(timed.count(name) == QUICK.rounds for name in names)
    assert all(
        first != second for first, second in itertools.pairwise(timed)
    )  # never twice in a row
    rounds = [timed[i : i + len(names)] for i in range(0, len(timed), len(names))]
    assert all(sorted(one_round) == names for one_round in rounds)
    assert len({one_round[0] for one_round in rounds}) > 1  # no variant always runs first


def test_warmup_calls_happen_before_any_timed_call():
    calls: list[str] = []
    config = BenchmarkConfig(warmup=4, rounds=3)
    compare(recording_variants(["a", "b"], calls), baseline="a", config=config)
    assert sorted(calls[:8]) == ["a"] * 4 + ["b"] * 4
    assert len(calls) == 8 + 6


def test_twice_the_work_is_slower_and_half_the_work_faster():
    variants = {"one": lambda: busy(2), "two": lambda: busy(4), "half": lambda: busy(1)}
    result = compare(variants, baseline="one", config=QUICK)

    assert result.speedup("one") == 1.0
    assert 0.2 < result.speedup("two") < 0.85
    assert 1.2 < result.speedup("half") < 5.0
    for name, variant in result.variants.items():
        stats, spread = variant.stats, variant.spread
        assert stats.repeats == QUICK.rounds, name
        assert stats.min <= spread.q1 <= stats.median <= spread.q3 <= stats.max
        assert stats.median <= stats.p90 <= stats.max
        assert spread.iqr >= 0 and spread.stdev >= 0 and spread.mad >= 0


def test_time_budget_is_per_variant_and_keeps_three_samples():
    config = BenchmarkConfig(warmup=0, rounds=50, max_seconds=0.05)
    result = compare({"slow": lambda: time.sleep(0.02), "no-op": lambda: None}, "slow", config)
    assert result.variants["slow"].stats.repeats == 3  # over budget after 3 sleeps of 20 ms
    assert result.variants["no-op"].stats.repeats == 50  # its own budget is far from spent
    assert result.call_order[-47:] == ["no-op"] * 47


def test_thread_count_is_fixed_during_the_run_and_restored_after():
    before = torch.get_num_threads()
    seen: list[int] = []
    config = BenchmarkConfig(warmup=0, rounds=2, threads=1)
    result = compare({"a": lambda: seen.append(torch.get_num_threads())}, "a", config)
    assert seen == [1, 1]
    assert result.threads == 1 and result.machine["torch_threads"] == 1
    assert torch.get_num_threads() == before


def test_output_check_records_the_difference_to_the_baseline():
    x = torch.arange(6.0).reshape(2, 3)
    variants = {"exact": lambda: x * 1, "shifted": lambda: x + 0.25, "numpy": lambda: x.numpy()}
    result = compare(variants, "exact", BenchmarkConfig(warmup=1, rounds=3), check=max_abs_diff)
    assert result.variants["exact"].output_diff == 0.0
    assert result.variants["shifted"].output_diff == pytest.approx(0.25)
    assert result.variants["numpy"].output_diff == 0.0
    assert (
        compare(variants, "exact", BenchmarkConfig(rounds=2)).variants["shifted"].output_diff
        is None
    )


def test_max_abs_diff_walks_nests_and_rejects_mismatches():
    a = (torch.zeros(2), {"logits": torch.ones(3)})
    b = (torch.tensor([0.0, -0.5]), {"logits": torch.ones(3, dtype=torch.bfloat16)})
    assert max_abs_diff(a, b) == 0.5
    with pytest.raises(ValueError, match="different shapes"):
        max_abs_diff(torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match="different lengths"):
        max_abs_diff((torch.zeros(1),), (torch.zeros(1), torch.zeros(1)))


def test_baseline_must_be_one_of_the_variants():
    with pytest.raises(
        ValueError, match=r"baseline 'eagre' is not one of .*Did you mean \"eager\""
    ):
        compare({"eager": lambda: None, "onnx": lambda: None}, baseline="eagre")
    with pytest.raises(ValueError, match="at least one variant"):
        compare({}, baseline="eager")


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"warmup": -1}, "warmup"),
        ({"rounds": 0}, "rounds"),
        ({"rounds": True}, "rounds"),
        ({"threads": 0}, "threads"),
        ({"max_seconds": 0}, "max_seconds"),
        ({"max_seconds": math.inf}, "max_seconds"),
        ({"max_seconds": "10"}, "max_seconds"),
        ({"seed": 1.5}, "seed"),
        ({"device": "gpu"}, "device"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(options, field):
    with pytest.raises(ValueError, match=rf"BenchmarkConfig\.{field} must"):
        BenchmarkConfig(**options)


def test_config_round_trips_and_rejects_unknown_keys():
    config = BenchmarkConfig(warmup=2, rounds=7, threads=1, max_seconds=1.5, seed=9)
    assert BenchmarkConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match=r"unknown BenchmarkConfig key 'round'.*\"rounds\""):
        BenchmarkConfig.from_dict({"round": 3})


def test_result_json_has_machine_facts_config_and_figures(tmp_path):
    result = compare(
        {"base": lambda: busy(1), "slow": lambda: busy(2)},
        "base",
        BenchmarkConfig(warmup=1, rounds=4),
    )
    path = result.write("unit-test", directory=tmp_path)

    assert path == tmp_path / "unit-test.json"
    assert [p.name for p in tmp_path.iterdir()] == ["unit-test.json"]  # no temporary left over
    data = json.loads(path.read_text())
    assert {"cpu_model", "cpu_features", "logical_cpus", "torch_threads", "torch_version"} <= set(
        data["machine"]
    )
    assert datetime.fromisoformat(data["timestamp_utc"]).utcoffset().total_seconds() == 0
    assert BenchmarkConfig.from_dict(data["config"]) == result.config
    assert data["baseline"] == "base"
    assert data["call_order"] == result.call_order and len(data["call_order"]) == 8
    slow = data["variants"]["slow"]
    assert slow["samples"] == len(slow["samples_ms"]) == 4
    assert slow["speedup_vs_baseline"] == pytest.approx(
        data["variants"]["base"]["median_ms"] / slow["median_ms"]
    )
    assert {"median_ms", "p90_ms", "iqr_ms", "stdev_ms", "mad_ms", "min_ms", "max_ms"} <= set(slow)


def test_failed_write_leaves_the_previous_result_intact(tmp_path):
    path = write_result_json("run", {"median_ms": 1.0}, tmp_path)
    with pytest.raises(TypeError):
        write_result_json("run", {"median_ms": object()}, tmp_path)  # not JSON-serialisable
    assert json.loads(path.read_text()) == {"median_ms": 1.0}
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]
    with pytest.raises(ValueError, match="plain file name"):
        write_result_json("../escape", {}, tmp_path)


def test_table_has_a_row_per_variant_and_names_skipped_ones():
    result = compare({"a": lambda: None, "b": lambda: None}, "a", BenchmarkConfig(rounds=2))
    result.skipped["onnxruntime"] = "export failed"
    table = result.to_table()
    assert list(table.columns[0].cells) == ["a *", "b"]
    assert list(table.columns[7].cells) == ["1.00x", f"{result.speedup('b'):.2f}x"]
    assert str(table.caption).endswith("\nskipped onnxruntime: export failed")

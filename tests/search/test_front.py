"""The front, the chosen trial and the discarding of hopeless candidates."""

from typing import Any

from torchslim.search.front import chosen, hopeless, pareto_front


def _record(number: int, drop: float, latency: float, size: int, **choices: Any) -> dict:
    base = {"depth": "none", "keep_macs": 1.0, "format": "fp32"}
    return {
        "number": number,
        "state": "complete",
        "drop": drop,
        "latency_ms": latency,
        "size_bytes": size,
        "feasible": drop <= 1.0,
        "choices": {**base, **choices},
    }


RECORDS = [
    _record(0, 0.2, 2.0, 100),
    _record(1, 0.5, 1.0, 100),
    _record(2, 0.6, 1.5, 120),  # beaten by 1 on every count
    _record(3, 3.0, 0.5, 40),  # fastest, over the budget
    {"number": 4, "state": "failed", "choices": {}},
]


def test_front_holds_exactly_the_undominated_trials() -> None:
    front = pareto_front(RECORDS)
    assert front == [0, 1, 3]
    for number in front:
        mine = RECORDS[number]
        for other in RECORDS[:4]:
            keys = ("drop", "latency_ms", "size_bytes")
            assert not (
                all(other[k] <= mine[k] for k in keys) and any(other[k] < mine[k] for k in keys)
            )


def test_chosen_is_the_fastest_within_budget_and_smallest_for_size() -> None:
    assert chosen(RECORDS, "latency")["number"] == 1  # trial 3 is faster but over budget
    assert chosen(RECORDS, "size")["number"] == 0  # ties on size: the smaller drop
    assert chosen(RECORDS[3:], "latency") is None


def test_hopeless_needs_the_same_path_and_a_wider_trial_over_twice_the_budget() -> None:
    done = [_record(0, 5.0, 1.0, 10, keep_macs=0.6, prune_method="l2")]
    narrower = {"depth": "none", "keep_macs": 0.4, "prune_method": "l2", "format": "fp32"}
    assert "trial 0" in hopeless(narrower, done, max_drop=1.0)
    assert hopeless({**narrower, "keep_macs": 0.8}, done, 1.0) == ""  # keeps more: may be fine
    assert hopeless({**narrower, "format": "int8"}, done, 1.0) == ""  # another path
    assert hopeless({**narrower, "prune_method": "l1"}, done, 1.0) == ""
    assert hopeless(narrower, done, max_drop=3.0) == ""  # 5.0 is within twice 3.0

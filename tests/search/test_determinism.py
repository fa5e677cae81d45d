"""Same seed, same trials: on 1 worker or 2 Ray workers, and after a kill and a resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from torchslim.search import SearchConfig, search
from torchslim.search.study import STUDY_NAME
from torchslim.zoo.options import resolve_model

CONFIG = dict(max_drop=1.0, generation=2, threads=1, repeats=5, formats=("fp32",))
SRC = Path(__file__).parents[2] / "src"


def _trials(out: Path) -> dict[int, dict[str, Any]]:
    state = json.loads((out / "search.json").read_text())
    return {t["number"]: t for t in state["trials"]}


def _study_front(out: Path) -> list[int]:
    """The study's own Pareto front (over what the sampler was told: metric, MACs, bytes)."""
    import optuna

    study = optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{out / 'study.db'}")
    return sorted(t.number for t in study.best_trials)


def _same_trials(a: Path, b: Path) -> None:
    first, second = _trials(a), _trials(b)
    assert sorted(first) == sorted(second)
    for number, trial in first.items():
        other = second[number]
        assert trial["choices"] == other["choices"], number
        assert trial["state"] == other["state"], number
        if trial["state"] == "complete":  # what the sampler saw is the same too
            assert trial["metric"] == pytest.approx(other["metric"], abs=1e-6)
            assert trial["size_bytes"] == other["size_bytes"]
            assert trial["macs"] == other["macs"]
    assert _study_front(a) == _study_front(b)


@pytest.mark.slow
def test_two_ray_workers_give_the_trials_of_one(tmp_path: Path) -> None:
    entry = resolve_model("tiny-cnn")
    search(entry, SearchConfig(max_trials=4, workers=1, **CONFIG), tmp_path / "one")
    state = search(entry, SearchConfig(max_trials=4, workers=2, **CONFIG), tmp_path / "ray")
    assert state.workers == "local Ray, 2 workers"
    _same_trials(tmp_path / "one", tmp_path / "ray")


KILLED = """
import sys
from torchslim.search import SearchConfig, search
from torchslim.zoo.options import resolve_model
config = SearchConfig(max_trials=6, **{config})
search(resolve_model("tiny-cnn"), config, sys.argv[1])
"""


@pytest.mark.slow
def test_killed_search_resumes_to_the_same_front(tmp_path: Path) -> None:
    entry = resolve_model("tiny-cnn")
    search(entry, SearchConfig(max_trials=6, **CONFIG), tmp_path / "whole")
    killed = tmp_path / "killed"
    environment = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED.format(config=repr(CONFIG)), str(killed)], env=environment
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:  # into the second generation
        if (killed / "search.json").is_file() and len(_trials(killed)) >= 3:
            break
        time.sleep(0.2)
    assert process.poll() is None, "the search ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert len(_trials(killed)) < 6
    state = search(entry, SearchConfig(max_trials=6, **CONFIG), killed, resume=True)
    assert state.stopped == "trials"
    _same_trials(tmp_path / "whole", killed)

"""deploy's final timing: finalists re-timed each loaded from its files in its own process."""

from __future__ import annotations

import torch

from models import tiny_convnet, tiny_images
from torchslim.deploy import DeployConfig, deploy
from torchslim.deploy._isolated import finalists, time_isolated
from torchslim.deploy._runtime import Candidate


def _calibration() -> list[tuple[torch.Tensor, ...]]:
    images, _ = tiny_images(32, seed=2)
    return [(chunk,) for chunk in images.split(16)]


def _timings(**medians: float) -> dict[str, dict[str, float]]:
    return {name.replace("_", "-"): {"median_ms": ms} for name, ms in medians.items()}


def test_finalists_are_the_fastest_few_within_one_and_a_half_times_the_best() -> None:
    names = ["a", "b", "c", "d"]
    accepted = [Candidate(n, "onnxruntime", lambda: None, {}) for n in names]
    timings = _timings(a=2.0, b=1.0, c=1.4, d=1.6)
    assert [c.name for c in finalists(accepted, timings, 3)] == ["b", "c"]
    assert [c.name for c in finalists(accepted, timings, 1)] == ["b"]


def test_a_saved_candidate_is_timed_in_a_worker_that_loads_its_files() -> None:
    model = tiny_convnet().eval()
    config = DeployConfig(
        backend="onnxruntime",
        activation_type="uint8",
        weight_granularity="channel",
        timing="in-process",
        rounds=4,
        warmup=1,
        threads=1,
    )
    deployed = deploy(model, _calibration(), config)
    candidate = Candidate(deployed.candidate, deployed.backend, deployed.runtime, deployed.settings)
    broken = Candidate("broken", "onnxruntime", deployed.runtime, deployed.settings)
    artifacts = {deployed.candidate: deployed.artifact, "broken": {"model.onnx": b"not onnx"}}
    inputs = (torch.randn(4, 1, 8, 8),)
    timings, failed = time_isolated(model, [candidate, broken], artifacts, inputs, config)
    assert set(timings) == {"torch-fp32-eager", deployed.candidate}
    assert timings[deployed.candidate]["median_ms"] > 0
    assert timings["torch-fp32-eager"]["speedup_vs_fp32_eager"] == 1.0
    assert "broken" in failed and "build failed" in failed["broken"]

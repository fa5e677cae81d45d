"""deploy(backend="auto"): measured choice, recorded decision, artifact round trip, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import torchslim.deploy._runtime as runtime_module
from cpu_kinds import CPU_KINDS, ZEN2, deploy_or_refusal
from models import tiny_convnet, tiny_images
from torchslim import zoo
from torchslim._machine import ISA_FLAGS
from torchslim._outdir import RECORD  # the artifact's record of its files
from torchslim.deploy import (
    BackendUnavailableError,
    DeployConfig,
    DeployError,
    deploy,
    load_deployed,
)
from torchslim.errors import ConfigError
from torchslim.evaluate import comparison_table, evaluate
from torchslim.evaluate.size import parameter_count, saved_size_bytes
from torchslim.quantize.observers import CalibrationError

FAST = {"rounds": 3, "warmup": 1, "timing": "in-process", "single_thread": False}


def _calibration() -> list[tuple[torch.Tensor, ...]]:
    images, _ = tiny_images(48, seed=1)
    return [(chunk,) for chunk in images.split(16)]


@CPU_KINDS
def test_auto_picks_the_fastest_measured_candidate_and_says_why(cpu: tuple[str, ...]) -> None:
    model = tiny_convnet()
    config = DeployConfig(
        candidates=("onnxruntime",), batch_size=4, rounds=3, warmup=1, cpu_features=cpu
    )
    deployed = deploy_or_refusal(model, _calibration(), config)
    if deployed is None:  # full-range int8 on a CPU whose kernels saturate: all refused
        return
    decision = deployed.decision
    table = decision["candidates"]
    schemes = {"u8s8", "s8s8", "u8s8-per-tensor", "s8s8-per-tensor"}
    # each scheme at the configured threads and, as a rival, at 1 thread
    rivals = ("", "-1thread") if config.threads > 1 else ("",)
    assert set(table) == {f"onnxruntime-{s}{t}" for s in schemes for t in rivals}
    assert decision["chosen"] == deployed.candidate and table[deployed.candidate]["accepted"]
    assert decision["cpu"]["features"] == {name: name in cpu for name in ISA_FLAGS}
    assert deployed.settings["weight_bits"] == (7 if cpu == ZEN2 else 8)
    accepted = {name for name, figures in table.items() if figures["accepted"]}
    # the finalists were re-timed each in its own process; the fastest there wins
    alone = {name: f["isolated"]["median_ms"] for name, f in table.items() if "isolated" in f}
    if alone:
        assert deployed.candidate == min(alone, key=alone.__getitem__)
        assert "own process" in decision["reason"] and decision["timing"].endswith("own process")
    else:  # one finalist only: the in-process race decided
        assert deployed.candidate == min(accepted, key=lambda name: table[name]["median_ms"])
    for figures in table.values():
        passed = figures["cosine"] >= config.min_cosine
        passed = passed and figures["top1_agreement"] >= config.min_top1_agreement
        assert figures["accepted"] == passed
        if not figures["accepted"]:  # a refused candidate is never timed
            assert not {"median_ms", "p90_ms", "isolated"} & set(figures)
            continue
        # every speed-up sits beside the fp32 median of its own race
        for race in (figures, figures.get("isolated")):
            if race is not None:
                ratio = race["fp32_eager_median_ms"] / race["median_ms"]
                assert race["speedup_vs_fp32_eager"] == pytest.approx(ratio)
    assert decision["fp32_eager"]["median_ms"] > 0 and decision["batch_size"] == 4
    assert "fastest" in decision["reason"] and deployed.candidate in decision["reason"]


def test_a_candidate_that_disagrees_with_fp32_is_rejected() -> None:
    # a cosine threshold no int8 model can meet: every candidate is measured, then refused
    config = DeployConfig(backend="onnxruntime", min_cosine=1.0, min_top1_agreement=1.0, **FAST)
    with pytest.raises(DeployError, match="disagreeing with fp32"):
        deploy(tiny_convnet(), _calibration(), config)


def test_artifact_round_trip(tmp_path: Path) -> None:
    model = tiny_convnet()
    config = DeployConfig(
        backend="onnxruntime", activation_type="uint8", weight_granularity="channel", **FAST
    )
    deployed = deploy(model, _calibration(), config)
    assert deployed.settings["per_channel"]
    out = deployed.save(tmp_path / "deployed")
    assert sorted(p.name for p in out.iterdir()) == [RECORD, "manifest.json", "model.onnx"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["backend"] == "onnxruntime" and manifest["candidate"] == "onnxruntime-u8s8"
    assert manifest["decision"]["chosen"] == "onnxruntime-u8s8"
    loaded = load_deployed(out)
    x, _ = tiny_images(8, seed=3)
    torch.testing.assert_close(loaded(x), deployed(x), rtol=0, atol=0)
    assert loaded.fp32_ops == deployed.fp32_ops
    # torchslim.evaluate's size and parameter count see the artifact, not an empty module
    assert saved_size_bytes(loaded) == (out / "model.onnx").stat().st_size
    assert parameter_count(loaded) == parameter_count(model)


def test_a_tampered_artifact_is_refused(tmp_path: Path) -> None:
    config = DeployConfig(backend="onnxruntime", activation_type="uint8", **FAST)
    out = deploy(tiny_convnet(), _calibration(), config).save(tmp_path / "d")
    data = bytearray((out / "model.onnx").read_bytes())
    data[-1] ^= 0xFF
    (out / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(DeployError, match="checksum"):
        load_deployed(out)
    with pytest.raises(DeployError, match="no manifest"):
        load_deployed(tmp_path)


def test_missing_backend_names_the_pip_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real = runtime_module.importlib.util.find_spec

    def find_spec(name: str, *args: object) -> object:
        return None if name == "openvino" else real(name, *args)

    monkeypatch.setattr(runtime_module.importlib.util, "find_spec", find_spec)
    with pytest.raises(BackendUnavailableError, match=r"torchslim\[openvino\]"):
        deploy(tiny_convnet(), _calibration(), DeployConfig(backend="openvino", **FAST))
    # auto skips it and says so
    config = DeployConfig(candidates=("onnxruntime", "openvino"), activation_type="uint8", **FAST)
    deployed = deploy(tiny_convnet(), _calibration(), config)
    assert "openvino" in deployed.decision["not_built"]
    assert deployed.backend == "onnxruntime"


@pytest.mark.parametrize(
    "batches, message",
    [
        ([], "got none"),
        ([(torch.full((4, 1, 8, 8), float("nan")),)], "NaN or Inf"),
        ([(torch.empty(0, 1, 8, 8),)], "empty"),
        (["not a tensor"], "not a tensor"),
    ],
)
def test_bad_calibration_is_refused(batches: list, message: str) -> None:
    with pytest.raises(CalibrationError, match=message):
        deploy(tiny_convnet(), batches, DeployConfig(backend="onnxruntime", **FAST))


@CPU_KINDS
def test_model_is_untouched(cpu: tuple[str, ...]) -> None:
    model = tiny_convnet()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = DeployConfig(backend="onnxruntime", activation_type="int8", cpu_features=cpu, **FAST)
    deploy_or_refusal(model, _calibration(), config)  # deployed or refused: untouched either way
    assert model.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(CalibrationError):
        deploy(model, [], DeployConfig(backend="onnxruntime"))
    assert all(torch.equal(before[k], model.state_dict()[k]) for k in before)


def test_config_validation_and_round_trip() -> None:
    config = DeployConfig(backend="auto", candidates=("openvino",), batch_size=16)
    assert DeployConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="backend"):
        DeployConfig(backend="tensorrt")
    with pytest.raises(ConfigError, match="Did you mean"):
        DeployConfig.from_dict({"batchsize": 4})
    with pytest.raises(ConfigError, match="min_cosine"):
        DeployConfig(min_cosine=1.5)
    with pytest.raises(ConfigError, match="single_thread must be True or False"):
        DeployConfig(single_thread="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="precision must be one of"):
        DeployConfig(precision="fp16")
    with pytest.raises(ConfigError, match="bf16' runs on OpenVINO only"):
        DeployConfig(precision="bf16", backend="onnxruntime")
    assert DeployConfig(precision="bf16").backends_to_try() == ("openvino",)
    # 1-thread rivals only when more threads were allowed and single_thread is on
    assert DeployConfig(threads=2).thread_options() == (2, 1)
    assert DeployConfig(threads=2, single_thread=False).thread_options() == (2,)
    assert DeployConfig(threads=1).thread_options() == (1,)
    # threads follow torch's count (OMP_NUM_THREADS), not a fixed 2
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert DeployConfig().threads == 1
    finally:
        torch.set_num_threads(threads)
    # the CPU the candidates are built for: detected, or stood in for by its ISA flags
    zen2 = DeployConfig(cpu_features=ZEN2)
    assert DeployConfig.from_dict(zen2.to_dict()) == zen2
    assert zen2.features() == {name: name in ZEN2 for name in ISA_FLAGS}
    with pytest.raises(ConfigError, match=r"cpu_features entry 'avx512vnni'.*Did you mean"):
        DeployConfig(cpu_features=("avx2", "avx512vnni"))


def test_evaluate_reports_the_deployed_artifact() -> None:
    entry = zoo.get("tiny-resnet8")
    model = entry.load()
    config = DeployConfig(backend="onnxruntime", activation_type="uint8", **FAST)
    deployed = deploy(model, entry.calibration_batches(2), config)
    before, after = evaluate(model, entry, repeats=3), evaluate(deployed, entry, repeats=3)
    assert after.size_bytes == len(deployed.artifact["model.onnx"])
    assert after.size_bytes < before.size_bytes / 2  # int8 weights vs fp32 safetensors
    assert after.params == before.params
    assert set(after.metrics) == set(before.metrics)
    # the runtime's activations are out of sight: not measured, never the file size instead
    assert after.peak_memory_bytes is None and before.peak_memory_bytes is not None
    assert "not measured" in after.details["peak_memory"]
    rows = comparison_table(before, after, "t").columns[2]._cells
    assert "not measured" in rows

"""``quantize --scheme w8a8`` (deployed): every flag acts on the backend or is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cpu_kinds import ZEN2
from torchslim import _machine
from torchslim.cli import app


def _invoke(*args: str, model: str = "tiny-cnn") -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["quantize", model, *args, "--repeats", "3"])
    return result.exit_code, result.stdout, f"{result.output}{result.exception or ''}"


@pytest.mark.assets  # a trained model: tiny-cnn's random logits are too close for top-1
def test_observer_ignore_weight_format_threads_and_budget_reach_the_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_machine, "_cpuinfo", lambda: ("stand-in", frozenset(ZEN2)))
    out = tmp_path / "w8a8"
    code, stdout, output = _invoke(
        "--scheme", "w8a8", "--deploy", "onnxruntime", "--calibration-batches", "2",
        "--observer", "kl", "--ignore", "re:fc_layers\\.2", "--weight-format", "int8-tensor",
        "--threads", "1", "--deploy-budget", "5", "--json", "--out", str(out), model="mnist-cnn",
    )  # fmt: skip
    assert code == 0, output
    manifest = json.loads((out / "manifest.json").read_text())
    config = manifest["decision"]["config"]
    assert config["calibration_method"] == "entropy"  # kl: ONNX Runtime's entropy method
    assert config["weight_granularity"] == "tensor" and config["threads"] == 1
    assert config["ignore"] == ["fc_layers.2"] and config["budget_s"] == 5
    assert manifest["settings"]["kept_fp32"] == ["/fc_layers/fc_layers.2/Gemm"]
    assert not manifest["settings"]["per_channel"] and manifest["settings"]["intra_op_threads"] == 1
    flags = manifest["decision"]["quantize_flags"]
    assert flags["observer"] == {"requested": "kl", "calibration_method": "entropy"}
    assert json.loads(stdout)["details"]["deploy"]["decision"]["quantize_flags"] == flags


def test_the_default_observer_is_recorded_as_what_it_became(tmp_path: Path) -> None:
    out = tmp_path / "w8a8"
    code, _, output = _invoke(
        "--scheme", "w8a8", "--deploy", "onnxruntime", "--calibration-batches", "2",
        "--deploy-budget", "5", "--out", str(out),
    )  # fmt: skip
    if code != 0:  # every candidate refused on this CPU: nothing written
        assert "no deployment candidate is usable" in output and not out.exists()
        return
    flags = json.loads((out / "manifest.json").read_text())["decision"]["quantize_flags"]
    assert flags["observer"] == {"requested": "auto", "calibration_method": "minmax"}


@pytest.mark.parametrize(
    "args, message",
    [
        (("--scheme", "w8a8", "--observer", "mse"), "--observer mse does not apply"),
        (("--scheme", "w8a8", "--weight-format", "int4-g32"), "int4-g32 does not apply"),
        (("--scheme", "w8a8", "--ignore", "classifer.4"), "matches no layer"),
        (("--scheme", "w8a8", "--deploy", "none", "--deploy-budget", "9"), "--deploy-budget"),
        (("--scheme", "w4-weight", "--deploy-budget", "9"), "--deploy-budget"),
        (("--scheme", "bf16", "--observer", "kl"), "--observer"),
        (("--scheme", "w8a8", "--deploy-budget", "0"), "deploy-budget"),
    ],
)
def test_a_flag_the_path_cannot_use_is_refused_before_any_work(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    out = tmp_path / "x"
    code, _, output = _invoke(*args, "--calibration-batches", "1", "--out", str(out))
    assert code != 0 and message in output and not out.exists()

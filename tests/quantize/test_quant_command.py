"""``torchslim quantize``: the JSON contract per execution kind, the artifacts, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import torchslim.zoo as zoo
from cpu_kinds import CPU_KINDS, ZEN2
from torchslim import _machine
from torchslim.cli import app
from torchslim.quantize.storage import load_quantized


def _invoke(*args: str) -> tuple[int, str, str]:
    """Exit code, stdout, and the output plus any error raised (``main`` prints it in red)."""
    result = CliRunner().invoke(app, ["quantize", *args, "--repeats", "3"])
    return result.exit_code, result.stdout, f"{result.output}{result.exception or ''}"


def _json(*args: str) -> dict[str, object]:
    code, stdout, output = _invoke(*args, "--json")
    assert code == 0, output
    payload: dict[str, object] = json.loads(stdout)
    return payload


def test_simulated_scheme_reports_packed_size_and_says_it_is_simulated(tmp_path: Path) -> None:
    out = tmp_path / "w4"
    report = _json(
        "tiny-cnn", "--scheme", "w4-weight", "--calibration-batches", "2", "--out", str(out)
    )
    assert set(report) == {"model", "technique", "before", "after", "artifact", "details"}
    before, after, details = report["before"], report["after"], report["details"]
    assert isinstance(before, dict) and isinstance(after, dict) and isinstance(details, dict)
    assert details["execution"] == "simulated" and "not a low-precision speed-up" in details["note"]
    assert after["size_bytes"] < before["size_bytes"] / 5  # int4 codes packed two per byte
    assert set(after["latency_ms"]) >= {"median", "p90"}
    entry = zoo.get("tiny-cnn")
    reloaded = load_quantized(entry.load(), out / "model.quantized.safetensors")
    metric = next(iter(after["metrics"]))
    assert entry.evaluate(reloaded)[metric] == pytest.approx(after["metrics"][metric], abs=1e-5)


@CPU_KINDS
def test_w8a8_is_deployed_on_a_real_backend_that_agrees_with_fp32(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cpu: tuple[str, ...]
) -> None:
    # the CLI builds for the detected CPU: stand in for each kind by its ISA flags
    monkeypatch.setattr(_machine, "_cpuinfo", lambda: ("stand-in", frozenset(cpu)))
    out = tmp_path / "w8a8"
    code, stdout, output = _invoke(
        "tiny-cnn", "--scheme", "w8a8", "--deploy", "onnxruntime", "--calibration-batches", "2",
        "--out", str(out), "--json",
    )  # fmt: skip
    if code != 0:  # full-range int8 on a CPU whose kernels saturate: refused, nothing written
        assert cpu != ZEN2, output
        assert "no deployment candidate is usable" in output and not out.exists()
        return
    report = json.loads(stdout)
    details = report["details"]
    assert isinstance(details, dict) and details["execution"] == "deployed"
    deployed = details["deploy"]
    assert deployed["backend"] == "onnxruntime"
    assert deployed["settings"]["weight_bits"] == (7 if cpu == ZEN2 else 8)
    assert deployed["decision"]["candidates"][deployed["candidate"]]["accepted"]
    assert any(p.suffix == ".onnx" for p in out.iterdir())
    after = report["after"]
    assert isinstance(after, dict)
    assert after["metrics"]["cosine_vs_reference"] > 0.98


@pytest.mark.slow
@pytest.mark.assets
def test_w8a8_deployed_on_torch_pt2e_writes_a_loadable_pt2(tmp_path: Path) -> None:
    # a trained model: tiny-cnn's random logits are too close for the top-1 agreement check
    pytest.importorskip("torchao", reason="torchao extra not installed")
    from torchslim.deploy import load_deployed

    out = tmp_path / "pt2e"
    report = _json(
        "mnist-cnn", "--scheme", "w8a8", "--deploy", "torch", "--calibration-batches", "2",
        "--out", str(out),
    )  # fmt: skip
    details = report["details"]
    assert isinstance(details, dict) and details["deploy"]["backend"] == "torch"
    assert (out / "model.pt2").is_file()
    entry = zoo.get("mnist-cnn")
    metric = next(iter(report["after"]["metrics"]))  # type: ignore[index]
    loaded = entry.evaluate(load_deployed(out))[metric]
    assert loaded == pytest.approx(report["after"]["metrics"][metric], abs=1e-4)  # type: ignore[index]


def test_unknown_scheme_is_one_clear_error_with_a_hint(tmp_path: Path) -> None:
    code, _, output = _invoke("tiny-cnn", "--scheme", "w8a9", "--out", str(tmp_path / "x"))
    assert code != 0
    assert "did you mean" in output.lower() and "w8a8" in output
    assert not (tmp_path / "x").exists()


def test_unknown_deploy_backend_is_rejected_before_any_work(tmp_path: Path) -> None:
    code, _, output = _invoke("tiny-cnn", "--deploy", "tensorrt", "--out", str(tmp_path / "x"))
    assert code != 0 and "onnxruntime" in output


def test_bf16_runs_on_openvino_bf16_kernels_or_falls_back_to_the_measured_cast(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("openvino", reason="openvino extra not installed")
    from torchslim.deploy import openvino_backend

    common = ("--scheme", "bf16", "--calibration-batches", "2", "--allow-slower")
    if "BF16" in openvino_backend.cpu_capabilities():
        report = _json("tiny-cnn", *common, "--out", str(tmp_path / "ov"))
        details = report["details"]
        assert isinstance(details, dict) and details["execution"] == "deployed"
        assert details["deploy"]["settings"]["inference_precision"] == "bf16"
    # without bf16 compute, --deploy auto falls back to torch's cast, measured, and says why
    monkeypatch.setattr(openvino_backend, "cpu_capabilities", lambda: ["FP32", "INT8"])
    report = _json("tiny-cnn", *common, "--out", str(tmp_path / "cast"))
    details = report["details"]
    assert isinstance(details, dict) and details["execution"] == "cast"
    assert "no bf16 compute" in details["bf16_fallback"]
    code, _, output = _invoke(
        "tiny-cnn", *common, "--deploy", "openvino", "--out", str(tmp_path / "x")
    )
    assert code != 0 and "no bf16 compute" in output and not (tmp_path / "x").exists()

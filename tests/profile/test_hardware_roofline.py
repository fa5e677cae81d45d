import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from torchslim.cli import app
from torchslim.errors import ConfigError
from torchslim.profile import machine_state, profile
from torchslim.profile.hardware import HardwareSpec, load_spec, matmul_peak, shipped_specs
from torchslim.profile.latency_cache import calibrated_model
from torchslim.profile.latency_model import ClassFit, LatencyModel
from torchslim.profile.machine_state import ProbeReading
from torchslim.profile.roofline import measure_op_times, plot_roofline, roofline_rows

SPEC = HardwareSpec("test", {"float32": 100e9, "int8": 400e9}, 10e9, source="test")


def test_shipped_specs_load_with_sources():
    assert {"nvidia-h100-sxm", "nvidia-a100-sxm", "raspberry-pi-5"} <= set(shipped_specs())
    for name in shipped_specs():
        spec = load_spec(name)
        assert spec.source and spec.mem_bw_bytes_per_s > 0
        assert all(peak > 0 for peak in spec.peak_flops_per_s.values())
    assert load_spec("nvidia-h100-sxm").ridge_point("bfloat16") == pytest.approx(989.4e12 / 3.35e12)


def test_bad_specs_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match='Did you mean "nvidia-h100-sxm"'):
        load_spec("nvidia-h100-sx")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\npeak_flops_per_s: {float32: 1e9}\nmem_bw_bytes_per_s: 1e9\nsorce: y\n")
    with pytest.raises(ConfigError, match='Did you mean "source"'):
        load_spec(str(bad))
    bad.write_text("name: x\npeak_flops_per_s: {fp32: 1e9}\nmem_bw_bytes_per_s: 1e9\nsource: y\n")
    with pytest.raises(ConfigError, match="unknown dtypes"):
        load_spec(str(bad))


def test_matmul_peak_is_a_positive_rate():
    assert matmul_peak("float32", sizes=(64, 128), seconds=0.05) > 1e6


def test_roofline_labels_ops_against_the_ridge_point():
    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU())
    report = profile(model, (torch.randn(64, 256),), measure_memory=False)
    rows = {row.op: row for row in roofline_rows(report, SPEC)}
    assert SPEC.ridge_point() == 10.0
    assert rows["addmm"].arithmetic_intensity > 10 and rows["addmm"].bound == "compute"
    assert rows["relu"].bound == "memory"
    assert rows["addmm"].roofline_s == pytest.approx(rows["addmm"].flops / 100e9)
    assert rows["relu"].roofline_s == pytest.approx(rows["relu"].bytes / 10e9)


def test_measured_op_times_line_up_with_counted_ops(tmp_path):
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    ).eval()
    x = torch.randn(2, 3, 16, 16)
    counted = set(profile(model, (x,)).by_op())
    measured = measure_op_times(model, (x,), repeats=2)
    assert {"convolution", "addmm", "relu", "mean"} <= set(measured)
    assert set(measured) <= counted | {"flatten"}  # composite ops decompose like the counter's
    assert all(seconds >= 0 for seconds in measured.values())
    path = plot_roofline(
        roofline_rows(profile(model, (x,)), SPEC, None, measured), SPEC, tmp_path / "roof.png"
    )
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_class_fit_interpolates_efficiency_between_samples():
    fit = ClassFit([(1e6, 1e4, 1e-4), (1e9, 1e6, 1e-2)])  # 10 and 100 GFLOP/s
    assert fit.predict(1e6, 1e4) == pytest.approx(1e-4, rel=0.01)
    assert fit.predict(1e9, 1e6) == pytest.approx(1e-2, rel=0.01)
    assert 1e-4 < fit.predict(3e7, 1e5) < 1e-2 * 3e7 / 1e9 * 10


def test_latency_model_round_trips_and_predicts_a_sum():
    model = LatencyModel(
        {
            "view": ClassFit([(0, 0, 1e-6)]),
            "elementwise": ClassFit([(1e3, 8e3, 2e-6), (1e6, 8e6, 1e-4)]),
        },
        module_call_s=1e-6,
        threads=1,
        device="cpu",
    )
    assert LatencyModel.from_dict(json.loads(json.dumps(model.to_dict()))) == model
    report = profile(nn.ReLU(), (torch.randn(1000),), measure_memory=False)
    single = model.predict(report.records, module_calls=0)
    assert model.predict(report.records, module_calls=3) == pytest.approx(single + 3e-6)
    calls = LatencyModel(model.classes, 0.0, 1, "cpu", python_call_s=1e-7, calls_per_op=4.0)
    work = calls.predict(report.records, 0, python_calls=0)
    assert calls.predict(report.records, 0, python_calls=50) == pytest.approx(work + 5e-6)
    estimated = calls.predict(report.records, 0, python_calls=None)  # e.g. profiled on meta
    assert estimated == pytest.approx(work + 4 * len(report.records) * 1e-7)


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """A real calibration, on a machine the probe says is quiet (whatever else is running), so
    that it is cached and reused by the tests that follow."""
    home = tmp_path_factory.mktemp("home")
    quiet = ProbeReading({"matmul_256": 0.2, "tiny_op_chain_100": 0.3}, 0.0, 0.0, 64)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCHSLIM_HOME", str(home))
        patch.setattr(machine_state, "probe_machine", lambda *args, **kwargs: quiet)
        patch.setattr(machine_state, "SPREAD_LIMIT", float("inf"))
        yield calibrated_model(threads=1), home


def test_calibration_covers_every_class_and_is_cached(calibrated):
    model, home = calibrated
    assert {
        "conv",
        "conv_depthwise",
        "matmul",
        "attention",
        "elementwise",
        "normalization",
        "view",
    } <= set(model.classes)
    cached = list((home / "hardware").glob("*-latency-v*.json"))
    assert len(cached) == 1 and json.loads(cached[0].read_text())["threads"] == 1
    assert model.trust.trusted
    rates = (model.op_overhead_s, model.module_call_s, model.python_call_s)
    assert (
        min(rates) >= 0 and model.module_call_s + model.python_call_s > 0
    )  # nesting: all overhead
    assert model.calls_per_op > 0 or model.calls_per_module_call > 0


def test_cli_profile_json_and_compare(calibrated, monkeypatch):
    _, home = calibrated
    monkeypatch.setenv("TORCHSLIM_HOME", str(home))
    runner = CliRunner()
    result = runner.invoke(app, ["profile", "tiny-cnn", "--json", "--threads", "1"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert payload["total"]["flops"] >= 2 * payload["total"]["macs"] > 0
    assert payload["latency_ms"]["measured_median"] > 0 and payload["latency_ms"]["predicted"] > 0
    h100 = runner.invoke(
        app, ["profile", "tiny-cnn", "--json", "--hardware", "nvidia-h100-sxm", "--meta"]
    )
    assert h100.exit_code == 0, h100.output
    assert json.loads(h100.output)["latency_ms"]["measured_median"] is None

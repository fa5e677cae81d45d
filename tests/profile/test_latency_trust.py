"""The latency model knows when it cannot be trusted: probes are faked, never timed against."""

import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from torchslim.cli import app
from torchslim.profile import latency_cache, latency_model, machine_state, profile
from torchslim.profile.latency_cache import trusted_model
from torchslim.profile.latency_model import ClassFit, LatencyModel
from torchslim.profile.machine_state import ProbeReading, Trust, drift, verdict

QUIET = ProbeReading({"matmul_256": 0.2, "tiny_op_chain_100": 0.3}, 0.05, 0.1, 4)
BUSY = ProbeReading({"matmul_256": 0.5, "tiny_op_chain_100": 0.9}, 0.8, 3.9, 4)
DRIFTED_QUIET = ProbeReading({"matmul_256": 0.4, "tiny_op_chain_100": 0.3}, 0.05, 0.1, 4)


def _fake_model(trust: Trust, probe: ProbeReading = QUIET) -> LatencyModel:
    fit = ClassFit([(1e3, 8e3, 1e-6), (1e6, 8e6, 1e-4)])
    return LatencyModel(
        {"view": ClassFit([(0, 0, 1e-7)]), "elementwise": fit},
        module_call_s=1e-6,
        threads=2,
        device="cpu",
        op_overhead_s=2e-6,
        probe=probe,
        trust=trust,
    )


class _Machine:
    """A fake machine: what the next probes read, and how many calibrations ran."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, reading: ProbeReading) -> None:
        self.reading = reading
        self.calibrations = 0
        monkeypatch.setattr(machine_state, "probe_machine", lambda *a, **k: self.reading)
        monkeypatch.setattr(latency_cache, "calibrate", self._calibrate)

    def _calibrate(self, threads: int, device: str) -> LatencyModel:
        self.calibrations += 1
        return _fake_model(verdict(self.reading, threads), self.reading)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHSLIM_HOME", str(tmp_path))
    return tmp_path


def _cached_files(home):
    return list((home / "hardware").glob("*-latency-v[0-9].json"))


def test_verdict_names_the_spread_and_the_load():
    assert verdict(QUIET, threads=2) == Trust(True)
    busy = verdict(BUSY, threads=2)
    assert not busy.trusted
    assert "spread 80%" in busy.reason and "load average 3.90 on 4 CPUs" in busy.reason
    noisy_but_unloaded = ProbeReading(QUIET.reference_ms, 0.5, 0.0, 4)
    assert "spread" in verdict(noisy_but_unloaded, 2).reason
    assert "load" not in verdict(noisy_but_unloaded, 2).reason
    assert drift(QUIET, DRIFTED_QUIET) == pytest.approx(1.0)


def test_other_processes_cpu_use_decides_load_where_it_is_measured():
    # the load average counts this process's own threads: a benchmark that has just measured on
    # both cores reads 2.0 but nobody else is running
    own_load = ProbeReading(QUIET.reference_ms, 0.05, 2.0, 2, others_cpus=0.1)
    assert verdict(own_load, threads=2) == Trust(True)
    others = ProbeReading(QUIET.reference_ms, 0.05, 0.0, 2, others_cpus=1.2)
    busy = verdict(others, threads=2)
    assert not busy.trusted and "other processes used 1.20 of 2 CPUs" in busy.reason
    assert verdict(others, threads=1) == Trust(True)  # one core left to them, and they use it
    assert ProbeReading.from_dict(others.to_dict()) == others
    old = {k: v for k, v in QUIET.to_dict().items() if k != "others_cpus"}  # older cache files
    assert ProbeReading.from_dict(old).others_cpus is None


def test_others_cpu_counts_another_busy_process():
    import subprocess
    import sys
    import time

    meter = machine_state.OthersCpu()
    meter.start()
    if meter.stop() is None:
        pytest.skip("no /proc/stat on this platform")
    spinner = subprocess.Popen([sys.executable, "-c", "import time\nt=time.monotonic()+3\n"
                                "while time.monotonic()<t: pass"])  # fmt: skip
    try:
        time.sleep(0.5)
        meter.start()
        time.sleep(1.0)  # this process idle: whatever is counted is someone else's
        busy = meter.stop()
    finally:
        spinner.kill()
    assert busy is not None and busy > 0.5  # at least most of the spinner's core


def test_a_busy_calibration_is_not_cached_and_not_trusted(home, monkeypatch):
    machine = _Machine(monkeypatch, BUSY)
    model, trust = trusted_model(threads=2)
    assert not trust.trusted and "spread" in trust.reason
    assert not model.trust.trusted and machine.calibrations == 1
    assert _cached_files(home) == []
    _, trust = trusted_model(threads=2)  # still busy: the provisional one, still untrusted
    assert not trust.trusted and machine.calibrations == 1
    machine.reading = QUIET  # quiet at last: a real calibration, cached
    _, trust = trusted_model(threads=2)
    assert trust.trusted and machine.calibrations == 2 and len(_cached_files(home)) == 1


def test_a_quiet_calibration_is_cached_and_revalidated(home, monkeypatch):
    machine = _Machine(monkeypatch, QUIET)
    _, trust = trusted_model(threads=2)
    assert trust.trusted and machine.calibrations == 1 and len(_cached_files(home)) == 1
    _, trust = trusted_model(threads=2)  # same probe: the cache is used
    assert trust.trusted and machine.calibrations == 1
    machine.reading = DRIFTED_QUIET  # quiet, but this machine is not the one calibrated
    _, trust = trusted_model(threads=2)
    assert trust.trusted and machine.calibrations == 2
    cached = json.loads(_cached_files(home)[0].read_text())
    assert cached["probe"]["reference_ms"] == DRIFTED_QUIET.reference_ms


@pytest.mark.parametrize("damage", ["cut-off", "other layout"])
def test_an_unreadable_cached_calibration_is_calibrated_again(home, monkeypatch, damage):
    machine = _Machine(monkeypatch, QUIET)
    trusted_model(threads=2)
    path = _cached_files(home)[0]
    stored = json.loads(path.read_text())
    if damage == "cut-off":
        path.write_text(path.read_text()[:40])
    else:
        path.write_text(json.dumps({**stored, "table_overheads": [0.0, 0.0, 0.0, 0.0]}))
    _, trust = trusted_model(threads=2)
    assert trust.trusted and machine.calibrations == 2
    assert json.loads(path.read_text())["table_overheads"] == stored["table_overheads"]


def test_a_cached_calibration_on_a_busy_machine_is_kept_but_not_trusted(home, monkeypatch):
    machine = _Machine(monkeypatch, QUIET)
    trusted_model(threads=2)
    machine.reading = BUSY
    model, trust = trusted_model(threads=2)
    assert machine.calibrations == 1  # no calibration on a busy machine
    assert model.trust.trusted and not trust.trusted
    assert "load average" in trust.reason
    assert json.loads(_cached_files(home)[0].read_text())["probe"]["spread"] == QUIET.spread


def test_calibration_records_a_busy_probe_as_untrusted(monkeypatch):
    monkeypatch.setattr(machine_state, "probe_machine", lambda *a, **k: BUSY)
    cases = [(nn.ReLU(), (torch.randn(8, 8),)), (torch.add, (torch.ones(4), torch.ones(4)))]
    cases += [(lambda t: t.view(-1), (torch.ones(4),))]
    monkeypatch.setattr(latency_model, "_cases", lambda device: iter(cases))
    model = latency_model.calibrate(threads=1)
    assert not model.trust.trusted and "load average" in model.trust.reason
    assert model.probe == BUSY


def test_every_op_pays_the_framework_overhead_and_every_module_call_its_own():
    model = _fake_model(Trust(True))
    report = profile(nn.Sequential(nn.ReLU(), nn.ReLU()), (torch.randn(10),), measure_memory=False)
    assert sum(report.module_calls.values()) == 3
    fit = model.classes["elementwise"]
    work = sum(fit.predict(r.cost.flops, r.cost.bytes) for r in report.records if r.cost)
    predicted = model.predict(report.records, sum(report.module_calls.values()))
    assert predicted == pytest.approx(work + len(report.records) * 2e-6 + 3 * 1e-6)
    overheads = latency_model._Overheads(op_s=1e-6, module_call_s=1e-6)
    assert overheads.work_seconds(10e-6, ops=3, is_module=True) == pytest.approx(6e-6)
    assert overheads.work_seconds(2e-6, ops=3, is_module=True) == pytest.approx(2e-7)  # floor


def test_a_class_keeps_the_fixed_cost_of_its_smallest_op():
    # tiny op: 10 us (all fixed cost); large op: 10 us fixed + 1 ms of work for 1e7 FLOPs
    fit = ClassFit.of([(1e2, 1e2, 10e-6), (1e7, 1e6, 1010e-6)])
    assert fit.fixed_s == 10e-6
    assert fit.predict(1e7, 1e6) == pytest.approx(1010e-6, rel=1e-3)
    # 10x the tiny op's work is still mostly fixed cost, not 10x its time
    assert fit.predict(1e3, 1e3) < 2 * 10e-6
    assert 10e-6 < fit.predict(1e6, 1e5) <= 10e-6 + 100e-6  # between: fixed, fixed + 1/10 work
    proportional = ClassFit(fit.samples)  # the old, intercept-free interpolation
    assert proportional.predict(1e3, 1e3) > 5 * 10e-6  # scaled the tiny op's time with work


def test_profile_says_the_machine_is_busy_instead_of_an_error_percentage(home, monkeypatch):
    _Machine(monkeypatch, BUSY)
    result = CliRunner().invoke(app, ["profile", "tiny-cnn", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "machine busy, prediction not trusted" in result.output
    assert "spread 80%" in result.output and "load average 3.90" in result.output
    as_json = CliRunner().invoke(app, ["profile", "tiny-cnn", "--threads", "1", "--json"])
    latency = json.loads(as_json.output)["latency_ms"]
    assert latency["trusted"] is False and "spread" in latency["not_trusted_because"]


def test_a_quiet_machine_prints_the_error_percentage(home, monkeypatch):
    _Machine(monkeypatch, QUIET)
    result = CliRunner().invoke(app, ["profile", "tiny-cnn", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "not trusted" not in result.output
    assert "prediction error" in result.output and "%" in result.output


def test_torch_profiler_prints_nothing(capfd):
    from torchslim.profile.roofline import measure_op_times

    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    capfd.readouterr()
    measured = measure_op_times(model, (torch.randn(2, 4),), repeats=1)
    out, err = capfd.readouterr()
    assert "addmm" in measured
    assert out == "" and err == ""

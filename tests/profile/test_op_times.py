"""The per-op table: each distinct ATen call described, replayed alone and kept per machine.
Times are injected where the prediction is checked; nothing here asserts a duration."""

import json
import re

import pytest
import torch
from test_latency_trust import QUIET, _Machine
from torch import nn

from torchslim.profile import latency_cache, latency_model, op_times, profile
from torchslim.profile.latency_cache import trusted_model
from torchslim.profile.latency_model import ClassFit, LatencyModel
from torchslim.profile.machine_state import Trust
from torchslim.profile.op_times import OpTimes, call_spec, replay


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHSLIM_HOME", str(tmp_path))
    return tmp_path


def _model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))


def _records(model: nn.Module, x: torch.Tensor):
    return profile(model, (x,), measure_memory=False, count_calls=True)


def test_a_call_is_described_by_its_layout_dtype_and_which_tensors_are_weights():
    model = _model()
    report = _records(model, torch.randn(2, 3, 8, 8))
    conv = json.loads(next(r.call for r in report.records if r.op == "convolution"))
    image, weight = conv["args"][0]["t"], conv["args"][1]["t"]
    assert image == [[2, 3, 8, 8], [192, 64, 8, 1], "float32", False]
    assert weight == [[4, 3, 3, 3], [27, 9, 3, 1], "float32", True]
    assert all(r.call is not None for r in report.records)
    again = _records(model, torch.randn(2, 3, 8, 8))  # new data: same calls, up to the zeros
    shares = re.compile(r', "relu", [0-9.]+')
    assert [shares.sub("", r.call) for r in again.records] == [
        shares.sub("", r.call) for r in report.records
    ]
    transposed = _records(nn.ReLU(), torch.randn(8, 3).t())  # same shape, other strides
    assert json.loads(transposed.records[0].call)["args"][0]["t"][1] == [1, 3]


def test_an_argument_the_table_cannot_describe_leaves_the_op_to_the_class_fit():
    assert call_spec(torch.ops.aten.relu.default, (object(),), {}, set()) is None
    assert OpTimes(threads=1)(None) is None


def test_a_replay_runs_the_op_on_random_tensors_of_the_recorded_layout():
    x = torch.randn(8, 3).t()
    spec = call_spec(torch.ops.aten.mul.Tensor, (x, x), {}, set())
    args = op_times._decode(json.loads(spec)["args"], "cpu", [])
    assert args[0].shape == (3, 8) and args[0].stride() == (1, 3)
    assert args[0].data_ptr() != args[1].data_ptr()
    replay(spec)()  # runs


def test_rectified_activations_are_replayed_with_their_share_of_zeros_and_spatial_smoothness():
    image = torch.nn.functional.avg_pool2d(torch.randn(2, 4, 16, 16), 5, 1, 2)
    rectified = image.clamp(min=image.flatten().kthvalue(int(0.7 * image.numel())).values)
    rectified = rectified - rectified.min()  # 70 % zeros, the rest positive
    spec = call_spec(torch.ops.aten.max_pool2d.default, (rectified, [2, 2]), {}, set())
    layout = json.loads(spec)["args"][0]["t"]
    assert layout[4:] == ["relu", 0.7]
    (replayed, _) = op_times._decode(json.loads(spec)["args"], "cpu", [])
    assert replayed.min() >= 0 and abs(float((replayed == 0).float().mean()) - 0.7) < 0.05
    neighbours = torch.corrcoef(
        torch.stack([replayed[..., 1:].flatten(), replayed[..., :-1].flatten()])
    )
    assert neighbours[0, 1] > 0.5  # smooth like a conv's output, not independent noise
    signed = call_spec(torch.ops.aten.max_pool2d.default, (image, [2, 2]), {}, set())
    assert len(json.loads(signed)["args"][0]["t"]) == 4  # data with negatives: plain noise


def test_weights_are_replayed_from_rotating_copies_that_overflow_the_cache():
    weight = nn.Parameter(torch.randn(16, 16))
    spec = call_spec(torch.ops.aten.mm.default, (torch.randn(4, 16), weight), {}, {
        weight.untyped_storage()._cdata})  # fmt: skip
    slots: list = []
    op_times._decode(json.loads(spec)["args"], "cpu", slots)
    assert len(slots) == 1
    first = [slots[0]() for _ in range(40)]
    copies = {t.data_ptr() for t in first}
    assert len(copies) == 32  # 1 KiB each: the most copies, cycled
    assert first[0].data_ptr() == first[32].data_ptr()


def test_a_call_on_an_oversized_tensor_or_invalid_random_data_is_not_replayed(monkeypatch):
    monkeypatch.setattr(op_times, "MAX_REPLAY_BYTES", 1024)
    big = call_spec(torch.ops.aten.relu.default, (torch.randn(1024),), {}, set())
    table = OpTimes(threads=1)
    assert table(big) is None
    # random data that the op refuses (a non-square matrix to a square-only op)
    refused = call_spec(torch.ops.aten.linalg_inv.default, (torch.randn(3, 3),), {}, set())
    spec = refused.replace("[3, 3], [3, 1]", "[3, 2], [2, 1]")
    assert table(spec) is None


def test_the_table_is_kept_on_disk_per_version(tmp_path):
    path = tmp_path / "table.json"
    spec = call_spec(torch.ops.aten.relu.default, (torch.randn(64),), {}, set())
    table = OpTimes(threads=1, path=path)
    table.measure([spec, spec, None])
    table.save()
    seconds = table(spec)
    assert seconds is not None and seconds > 0
    assert OpTimes(threads=1, path=path).seconds == {spec: seconds}
    stored = json.loads(path.read_text())
    path.write_text(json.dumps({**stored, "version": op_times.TABLE_VERSION + 1}))
    assert OpTimes(threads=1, path=path).seconds == {}


class _KnownTimes(OpTimes):
    """A table whose every replayable call took ``seconds`` (no timing in the test)."""

    def __init__(self, seconds: float, refuse: str = "") -> None:
        super().__init__(threads=1)
        self.each, self.refuse = seconds, refuse

    def __call__(self, spec):
        if spec is None or (self.refuse and self.refuse in spec):
            return None
        return self.each


def _fitted() -> LatencyModel:
    fit = ClassFit([(1e3, 8e3, 1e-6), (1e6, 8e6, 1e-4)])
    return LatencyModel(
        {"view": ClassFit([(0, 0, 1e-7)]), "elementwise": fit, "conv": fit, "matmul": fit},
        module_call_s=1e-6,
        threads=1,
        device="cpu",
        op_overhead_s=2e-6,
        python_call_s=5e-8,
        table_overheads=(3e-6, 1e-7, 1e-11),
    )


def test_with_a_table_each_op_costs_its_replayed_time_plus_the_table_overhead_rates():
    report = _records(_model(), torch.randn(2, 3, 8, 8))
    modules, calls = sum(report.module_calls.values()), report.python_calls
    model = _fitted().with_table(_KnownTimes(1e-5))
    predicted = model.predict_report(report)
    written = latency_model.written_bytes(report.records)
    assert written == 2 * 4 * (2 * 4 * 6 * 6) + 4 * (2 * 5)  # conv and ReLU outputs, the Linear's
    expected = len(report.records) * 1e-5 + modules * 3e-6 + calls * 1e-7 + written * 1e-11
    assert predicted == pytest.approx(expected)
    # an op the table cannot replay is predicted by its class fit and the per-op overhead
    partial = _fitted().with_table(_KnownTimes(1e-5, refuse="convolution"))
    conv = next(r for r in report.records if r.op == "convolution")
    assert partial.predict_op(conv) == _fitted().predict_op(conv)
    others = [r for r in report.records if r is not conv]
    assert all(partial.predict_op(r) == 1e-5 for r in others)


def test_the_replay_table_lives_beside_a_trusted_calibration_and_restarts_with_a_new_one(
    home,
    monkeypatch,
):
    machine = _Machine(monkeypatch, QUIET)
    model, trust = trusted_model(threads=2, replay_ops=True)
    assert trust.trusted and model.table is not None and model.table.path is not None
    assert model.table.path.parent == home / "hardware"
    model.table.path.write_text(json.dumps({"version": op_times.TABLE_VERSION, "seconds": {}}))
    trusted_model(threads=2, replay_ops=True)  # cached calibration: the table stays
    assert model.table.path.exists() and machine.calibrations == 1
    trusted_model(threads=2, refresh=True)  # a new calibration: the old replays are dropped
    assert not model.table.path.exists() and machine.calibrations == 2


def test_a_table_beside_an_untrusted_calibration_stays_in_memory(monkeypatch):
    untrusted = LatencyModel({}, 0.0, 1, "cpu", trust=Trust(False, "busy"))
    monkeypatch.setattr(latency_cache, "_trusted_model", lambda *a: (untrusted, untrusted.trust))
    model, _ = trusted_model(threads=1, replay_ops=True)
    assert model.table is not None and model.table.path is None

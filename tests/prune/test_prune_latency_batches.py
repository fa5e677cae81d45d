"""Latency scored at several batch sizes: the conv-kernel rule (oneDNN pads channels to its block,
batch-1 small convs stay native), the depth planner asking an injected latency function at every
batch size and keeping widths to ``round_to``, and the options' validation in config, CLI and
recipe."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from models import FAKE_LATENCY
from torchslim.benchmark import BenchmarkConfig, compare
from torchslim.cli import app
from torchslim.errors import ConfigError
from torchslim.pipeline.steps.prune import PruneOptions
from torchslim.profile import profile
from torchslim.profile.conv_kernels import channel_block, onednn_work_factor, runs_onednn
from torchslim.profile.report import ProfileReport
from torchslim.prune import StructuredPruneConfig, build_depth_plan, prune_
from torchslim.prune._inputs import batched
from torchslim.prune.apply import config_from_words
from torchslim.zoo.architectures import ResNet


def _resnet14() -> tuple[nn.Module, tuple[torch.Tensor, ...], list[tuple[torch.Tensor, ...]]]:
    torch.manual_seed(0)
    model = ResNet(14).eval()
    calibration = [(torch.randn(4, 1, 12, 12),) for _ in range(2)]
    return model, (torch.randn(1, 1, 12, 12),), calibration


class BatchRecordingLatency:
    """An injected latency function: conv MACs (padded to 16 channels at batch >= 16, as oneDNN
    runs them) plus a per-op overhead; it records the batch size of every forward it is asked."""

    def __init__(self) -> None:
        self.batches: set[int] = set()

    def __call__(self, report: ProfileReport) -> float:
        convs = [r for r in report.records if r.op_class == "conv" and r.cost is not None]
        batch = convs[0].input_shapes[0][0]
        self.batches.add(batch)
        seconds = 1e-6 * len(report.records)
        for record in convs:
            image, weight = record.input_shapes[0], record.input_shapes[1]
            factor = onednn_work_factor(image, weight, 1, False) if batch >= 16 else 1.0
            seconds += 1e-9 * record.cost.macs * factor  # type: ignore[union-attr]
        return seconds


def test_small_batch_one_convs_stay_native_and_batched_ones_run_onednn() -> None:
    assert not runs_onednn((1, 16, 28, 28), (16, 16, 3, 3), threads=1, strided=False)
    assert runs_onednn((1, 32, 28, 28), (32, 32, 3, 3), threads=1, strided=False)  # > 20 480
    assert runs_onednn((16, 16, 28, 28), (16, 16, 3, 3), threads=1, strided=False)
    assert not runs_onednn((4, 16, 28, 28), (16, 16, 1, 1), threads=1, strided=False)
    assert runs_onednn((4, 16, 28, 28), (16, 16, 1, 1), threads=2, strided=False)
    assert runs_onednn((4, 16, 28, 28), (16, 16, 1, 1), threads=1, strided=True)


def test_onednn_pays_for_channels_rounded_up_to_its_block() -> None:
    block = channel_block()
    assert onednn_work_factor((16, block, 14, 14), (block, block, 3, 3), 1, False) == 1.0
    past = block + 1
    padded = onednn_work_factor((16, past, 14, 14), (past, past, 3, 3), 1, False)
    assert padded == pytest.approx((2 * block / past) ** 2)
    assert onednn_work_factor((1, past, 14, 14), (past, past, 3, 3), 1, False) == 1.0  # native
    first = onednn_work_factor((16, 1, 28, 28), (past, 1, 3, 3), 1, False)
    assert first == pytest.approx(2 * block / past)  # one input channel is read unblocked
    depthwise = onednn_work_factor((16, past, 14, 14), (past, 1, 3, 3), 1, False)
    assert depthwise == 1.0


def test_latency_model_charges_the_padding_at_batch_16_only() -> None:
    block = channel_block()

    def predicted(batch: int, channels: int) -> float:
        conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        report = profile(conv, (torch.randn(batch, channels, 14, 14),), measure_memory=False)
        return sum(FAKE_LATENCY.predict_op(r) for r in report.records if r.op_class == "conv")

    assert predicted(16, block + 1) >= 0.9 * predicted(16, 2 * block)  # costs as the full block
    assert predicted(1, block + 1) < 0.7 * predicted(1, 2 * block)


def test_batched_repeats_the_example_rows() -> None:
    x = torch.arange(6.0).view(1, 6)
    (out,) = batched((x,), 16)
    assert out.shape == (16, 6) and torch.equal(out[15], x[0])
    assert batched((x, 3), 1)[1] == 3


def test_planner_asks_the_latency_at_every_batch_size_and_keeps_round_to() -> None:
    model, inputs, calibration = _resnet14()
    widths = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    latency = BatchRecordingLatency()
    config = StructuredPruneConfig(target_macs_ratio=0.6, depth="auto", round_to=4,
                                   latency_batch_sizes=(1, 16))  # fmt: skip
    plan = build_depth_plan(model, inputs, config, calibration, latency=latency)
    assert latency.batches == {1, 16}
    b1, b16 = plan.start.batch_latency_s
    assert plan.start.latency_s == pytest.approx(math.sqrt(b1 * b16))
    assert all(len(move.batch_latency_s) == 2 for move in plan.moves)
    assert "b1 " in str(plan) and "b16 " in str(plan)
    pruned = plan.apply()
    for name, module in pruned.named_modules():
        if isinstance(module, nn.Conv2d) and module.out_channels != widths[name]:
            assert module.out_channels % 4 == 0, (name, module.out_channels)
    assert plan.macs_after <= 0.4 * plan.macs_before


def test_planner_scores_only_the_batch_sizes_asked() -> None:
    model, inputs, calibration = _resnet14()
    latency = BatchRecordingLatency()
    config = StructuredPruneConfig(target_macs_ratio=0.5, depth="auto", latency_batch_sizes=(16,))
    plan = build_depth_plan(model, inputs, config, calibration, latency=latency)
    assert latency.batches == {16}
    assert plan.start.latency_s == pytest.approx(plan.start.batch_latency_s[0])


def test_latency_target_is_the_geometric_mean_over_batch_sizes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from torchslim.profile import latency_cache

    monkeypatch.setattr(latency_cache, "calibrated_model", lambda *args, **kwargs: FAKE_LATENCY)
    model, inputs, _ = _resnet14()
    config = StructuredPruneConfig(target_latency_ratio=0.3, latency_batch_sizes=(1, 16))
    result = prune_(model, config, inputs)
    assert result.macs_after is not None and result.macs_before is not None
    assert result.macs_after < result.macs_before
    assert model(*batched(inputs, 16)).shape == (16, 10)


@pytest.mark.parametrize(
    ("sizes", "message"),
    [((), "non-empty"), ((0, 16), ">= 1"), ((16, 16), "distinct"), ([1, 16], "tuple")],
)
def test_bad_latency_batch_sizes_are_config_errors(sizes: object, message: str) -> None:
    with pytest.raises(ConfigError, match="latency_batch_sizes must be") as error:
        StructuredPruneConfig(target_macs_ratio=0.5, latency_batch_sizes=sizes)  # type: ignore[arg-type]
    assert message.split()[0] in str(error.value)


def test_config_round_trips_batch_sizes_and_round_to() -> None:
    config = StructuredPruneConfig(target_macs_ratio=0.5, depth="auto", round_to=8,
                                   latency_batch_sizes=(1, 4, 16))  # fmt: skip
    assert StructuredPruneConfig.from_dict(config.to_dict()) == config


def test_words_and_recipe_options_carry_round_to_and_batch_sizes() -> None:
    config = config_from_words("l2", "macs=0.5", depth="auto", round_to=8,
                               latency_batch_sizes=(1, 16))  # fmt: skip
    assert isinstance(config, StructuredPruneConfig)
    assert (config.round_to, config.latency_batch_sizes) == (8, (1, 16))
    options = PruneOptions(target="latency=0.4", round_to=16, latency_batch_sizes=[16])  # type: ignore[arg-type]
    assert options.config().latency_batch_sizes == (16,)
    with pytest.raises(ConfigError, match=r"--latency-batch-sizes .* applies with --depth auto"):
        PruneOptions(target="macs=0.5", latency_batch_sizes=(1, 16))
    with pytest.raises(ConfigError, match="--round-to applies to structured targets"):
        config_from_words("magnitude", "sparsity=0.5", round_to=8)


def test_round_to_block_is_this_cpus_channel_block_and_prunes_to_it() -> None:
    assert config_from_words("l2", "macs=0.5", round_to="block").round_to == channel_block()
    options = PruneOptions(target="params=0.5", depth="auto", round_to="block")
    config = options.config()
    assert config.round_to == channel_block()
    model, inputs, _ = _resnet14()
    widths = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    prune_(model, dataclasses.replace(config, depth="off"), inputs)
    changed = {n: m.out_channels for n, m in model.named_modules()
               if isinstance(m, nn.Conv2d) and m.out_channels != widths[n]}  # fmt: skip
    assert changed and all(width % channel_block() == 0 for width in changed.values()), changed


@pytest.mark.parametrize("word", ["blok", "auto", 2.5])
def test_round_to_word_typo_is_one_clear_error(word: object) -> None:
    with pytest.raises(ConfigError, match="round_to must be an integer >= 1 or one of"):
        PruneOptions(target="macs=0.5", round_to=word)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--latency-batch-sizes", "1,x", "--depth", "auto"], "--latency-batch-sizes must be"),
        (["--latency-batch-sizes", "1,16"],
         "applies with --depth auto, --depth measured or --target latency"),
        (["--depth", "auto", "--latency-batch-sizes", "0"], "latency_batch_sizes must be"),
        (["--target", "sparsity=0.5", "--method", "magnitude", "--round-to", "8"],
         "--round-to applies to structured targets"),
        (["--round-to", "0"], "round_to must be an integer >= 1"),
        (["--round-to", "blok"], 'Did you mean "block"'),
    ],
)  # fmt: skip
def test_cli_bad_latency_options_are_one_clear_error(
    tmp_path: Path, args: list[str], message: str
) -> None:
    out = tmp_path / "x"
    result = CliRunner().invoke(app, ["prune", "tiny-resnet14", "--out", str(out), *args])
    assert result.exit_code != 0
    assert isinstance(result.exception, ConfigError), result.output
    assert message in str(result.exception)
    assert not out.exists()


def test_thread_cpu_clock_times_one_thread_only() -> None:
    with pytest.raises(ConfigError, match=r"clock=.thread_cpu. .* needs threads=1"):
        BenchmarkConfig(clock="thread_cpu", threads=2)
    with pytest.raises(ConfigError, match="clock must be one of"):
        BenchmarkConfig(clock="cycles")
    x = torch.randn(64, 64)
    config = BenchmarkConfig(warmup=1, rounds=3, threads=1, clock="thread_cpu")
    result = compare({"mm": lambda: x @ x, "add": lambda: x + x}, "mm", config)
    assert result.to_dict()["config"]["clock"] == "thread_cpu"
    assert all(len(v.samples_ms) == 3 for v in result.variants.values())

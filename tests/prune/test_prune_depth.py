"""Latency-aware depth + width pruning: residual blocks found and dropped, the target met, the
model untouched on failure, the artifact reloaded, and the CLI / recipe options validated."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import torchslim
import torchslim.zoo as zoo
from models import FAKE_LATENCY
from torchslim.cli import app
from torchslim.errors import ConfigError
from torchslim.profile import latency_cache
from torchslim.prune import PruneError, StructuredPruneConfig, build_depth_plan, prune_
from torchslim.prune.apply import config_from_words
from torchslim.prune.artifact import resize_to_record
from torchslim.prune.blocks import DROPPED, drop_block, residual_blocks
from torchslim.zoo.architectures import ResNet


@pytest.fixture(autouse=True)
def fake_latency(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fixed latency model: no calibration of this machine in unit tests."""
    monkeypatch.setattr(latency_cache, "calibrated_model", lambda *args, **kwargs: FAKE_LATENCY)


def _resnet14() -> tuple[nn.Module, tuple[torch.Tensor, ...], list[tuple[torch.Tensor, ...]]]:
    torch.manual_seed(0)
    model = ResNet(14).eval()  # two blocks per stage: 4 shape-preserving residual blocks
    calibration = [(torch.randn(4, 1, 12, 12),) for _ in range(2)]
    return model, (torch.randn(1, 1, 12, 12),), calibration


class Plain(nn.Module):
    """A stack of same-shape conv blocks without a skip connection: nothing to drop."""

    def __init__(self) -> None:
        super().__init__()
        self.stack = nn.Sequential(*[nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
                                     for _ in range(3)])  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 4, H, W)
        return self.stack(x)


def test_residual_blocks_are_the_shape_preserving_ones_with_a_skip() -> None:
    model, inputs, _ = _resnet14()
    assert residual_blocks(model, inputs) == ["layer1.0", "layer1.1", "layer2.1", "layer3.1"]
    assert residual_blocks(Plain(), (torch.randn(1, 4, 6, 6),)) == []


def test_depth_auto_meets_the_macs_target_and_keeps_the_output_shape() -> None:
    model, inputs, calibration = _resnet14()
    config = StructuredPruneConfig(target_macs_ratio=0.5, depth="auto")
    result = prune_(model, config, inputs, calibration)
    assert result.macs_before is not None and result.macs_after is not None
    assert 0.4 * result.macs_before <= result.macs_after <= 0.5 * result.macs_before
    assert result.params_after < result.params_before
    dropped = [name for name, entry in result.record.items() if entry == DROPPED]
    assert dropped and all(isinstance(model.get_submodule(n), nn.Identity) for n in dropped)
    assert model(*calibration[0]).shape == (4, 10)
    assert "block" in str(result.plan) and "DepthWidthPlan" in str(result.plan)


def test_depth_auto_meets_a_latency_target_by_the_latency_model() -> None:
    model, inputs, calibration = _resnet14()
    config = StructuredPruneConfig(target_latency_ratio=0.4, depth="auto")
    plan = build_depth_plan(model, inputs, config, calibration)
    assert plan.latency_s <= 0.6 * plan.start.latency_s
    assert residual_blocks(model, inputs)  # planning alone changes nothing
    assert plan.apply() is model and model(*inputs).shape == (1, 10)


def test_dropping_a_block_equals_zeroing_its_branch() -> None:
    """The skip connection stays: a dropped ReLU-ended block passes its (>= 0) input on."""
    model, _, calibration = _resnet14()
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        zeroed.layer2[1].bn2.weight.zero_()
        zeroed.layer2[1].bn2.bias.zero_()  # the branch outputs 0
        drop_block(model, "layer2.1")
        assert isinstance(model.layer2[1], nn.Identity)
        assert torch.allclose(model(*calibration[0]), zeroed(*calibration[0]), atol=1e-6)


def test_pruned_model_reloads_from_its_record() -> None:
    model, inputs, calibration = _resnet14()
    result = prune_(model, StructuredPruneConfig(target_macs_ratio=0.5, depth="auto"), inputs,
                    calibration)  # fmt: skip
    fresh = _resnet14()[0]
    resize_to_record(fresh, json.loads(json.dumps(result.record)))
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(*calibration[0]), model(*calibration[0]))


def test_out_of_reach_target_is_a_clear_error() -> None:
    model, inputs, calibration = _resnet14()
    config = StructuredPruneConfig(target_macs_ratio=0.5, depth="auto", ignore=("re:.*",))
    with pytest.raises(PruneError, match="out of reach: no residual block left"):
        prune_(model, config, inputs, calibration)
    assert residual_blocks(model, inputs)


def test_failure_after_the_plan_is_applied_leaves_the_model_untouched(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torchslim.prune as prune

    model, inputs, calibration = _resnet14()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def broken(*args: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(prune, "shape_record", broken)  # runs after plan.apply()
    with pytest.raises(RuntimeError, match="disk full"):
        prune_(model, StructuredPruneConfig(target_macs_ratio=0.5, depth="auto"), inputs,
               calibration)  # fmt: skip
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert residual_blocks(model, inputs) == ["layer1.0", "layer1.1", "layer2.1", "layer3.1"]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"target_macs_ratio": 0.5, "depth": "deep"}, "depth must be one of"),
        ({"uniform_ratio": 0.3, "depth": "auto"}, "not uniform_ratio"),
        ({"target_macs_ratio": 0.5, "depth": "auto", "drop_layers": (1,)}, "one or the other"),
    ],
)
def test_bad_depth_options_are_config_errors(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        StructuredPruneConfig(**fields)  # type: ignore[arg-type]


def test_words_carry_depth_and_drop_layers_for_structured_targets_only() -> None:
    config = config_from_words("l2", "latency=0.5", depth="auto")
    assert isinstance(config, StructuredPruneConfig) and config.depth == "auto"
    assert config_from_words("l2", "macs=0.3", drop_layers=(1,)).drop_layers == (1,)  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="--depth applies to structured targets"):
        config_from_words("magnitude", "sparsity=0.5", depth="auto")
    with pytest.raises(ConfigError, match="--drop-layers applies to structured targets"):
        config_from_words("nm", "2:4", drop_layers=(1,))


def test_depth_auto_on_a_transformers_model_says_use_drop_layers() -> None:
    from models import padded_tokens, tiny_sentence_encoder

    model = tiny_sentence_encoder()
    inputs = padded_tokens(1, 8)
    with pytest.raises(ConfigError, match="drop_layers"):
        prune_(model, StructuredPruneConfig(target_macs_ratio=0.3, depth="auto"), inputs)


def _cli(*args: str) -> dict[str, object]:
    result = CliRunner().invoke(app, ["prune", *args, "--json", "--repeats", "3"])
    assert result.exit_code == 0, result.output
    payload: dict[str, object] = json.loads(result.stdout)
    return payload


def test_cli_depth_auto_artifact_reloads_with_torchslim_load(tmp_path: Path) -> None:
    out = tmp_path / "deep"
    report = _cli("tiny-resnet14", "--target", "macs=0.5", "--depth", "auto", "--out", str(out))
    details = report["details"]
    assert isinstance(details, dict) and "DepthWidthPlan" in details["plan"]
    assert details["macs_after"] <= 0.5 * details["macs_before"]
    model = torchslim.load(out)
    assert any(isinstance(m, nn.Identity) for name, m in model.named_modules() if name)
    entry = zoo.get("tiny-resnet14")
    after = report["after"]
    assert isinstance(after, dict)
    assert entry.evaluate(model)["cosine_vs_reference"] == pytest.approx(
        after["metrics"]["cosine_vs_reference"], abs=1e-6
    )


def test_cli_drop_layers_on_a_transformers_model_reloads(tmp_path: Path) -> None:
    out = tmp_path / "shallow"
    report = _cli("tiny-bert", "--target", "macs=0.6", "--drop-layers", "1", "--out", str(out))
    details = report["details"]
    assert isinstance(details, dict) and details["macs_after"] <= 0.41 * details["macs_before"]
    model = torchslim.load(out)
    assert model.model.config.num_hidden_layers == 1
    assert model(*zoo.get("tiny-bert").example_inputs(2)).shape == (2, 16, 32)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--depth", "deep"], "depth must be one of"),
        (["--target", "sparsity=0.5", "--method", "magnitude", "--depth", "auto"],
         "--depth applies to structured targets"),
        (["--drop-layers", "x"], "--drop-layers 'x'"),
    ],
)  # fmt: skip
def test_cli_bad_depth_option_is_one_clear_error(
    tmp_path: Path, args: list[str], message: str
) -> None:
    out = tmp_path / "x"
    result = CliRunner().invoke(app, ["prune", "tiny-resnet14", "--out", str(out), *args])
    assert result.exit_code != 0
    assert isinstance(result.exception, ConfigError)
    assert message in str(result.exception)
    assert not out.exists()

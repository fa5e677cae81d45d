"""allocation="sensitivity": the global target is met within one rank step, sensitive layers keep
larger ranks, a failed allocation leaves the model untouched, bad values are refused clearly."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import torchslim
import torchslim.zoo
from torchslim.cli import app
from torchslim.errors import ConfigError
from torchslim.lowrank import FactorizeConfig, factorize_


def same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks for m in model.modules())


class TwoBranches(nn.Module):
    """Two Linear layers with the same weight; the output amplifies one branch 100 times, so
    the same truncation of it costs 10^4 times more output error."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.loud, self.quiet = nn.Linear(32, 32), nn.Linear(32, 32)
        self.quiet.load_state_dict(self.loud.state_dict())

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 32)
        return torch.cat([10.0 * self.loud(x), 0.1 * self.quiet(x)], dim=-1)  # (B, 64)


def sensitivity(target: str, method: str = "svd", **options: object) -> FactorizeConfig:
    return FactorizeConfig(
        method=method, target=target, allocation="sensitivity", check_speed=False, **options
    )


@pytest.mark.parametrize(
    ("entry", "method", "target"),
    [("tiny-resnet8", "tucker2", "macs=0.5"), ("tiny-bert", "svd", "params=0.3")],
)
def test_the_global_target_is_met_within_a_rank_step(entry: str, method: str, target: str) -> None:
    zoo_entry = torchslim.zoo.get(entry)
    model = zoo_entry.load()
    params_before = sum(p.numel() for p in model.parameters())
    inputs = tuple(zoo_entry.example_inputs(1))
    result = factorize_(
        model, sensitivity(target, method), zoo_entry.calibration_batches(2), inputs
    )
    summary = result.summary()
    goal, kept = summary["target"]["kept_goal"], summary["target"]["kept"]
    assert goal - 0.03 <= kept <= goal
    assert summary["allocation"] == "sensitivity" and summary["layers_factorized"] >= 1
    removed = summary["params_before"] - summary["params_after"]
    assert params_before - sum(p.numel() for p in model.parameters()) == removed
    assert no_hooks(model)
    model(*inputs)  # still runs


def test_the_more_sensitive_layer_keeps_the_larger_rank() -> None:
    model, x = TwoBranches(), torch.randn(64, 32, generator=torch.Generator().manual_seed(1))
    uniform = factorize_(
        copy.deepcopy(model), FactorizeConfig(target="params=0.5", check_speed=False)
    )
    assert uniform.layers["loud"]["ranks"] == uniform.layers["quiet"]["ranks"]  # same spectra
    result = factorize_(model, sensitivity("params=0.5"), calibration=[(x,)])
    loud, quiet = result.layers["loud"], result.layers["quiet"]
    scanned = {
        name: [p["damage"] for p in result.layers[name]["sensitivity"]]
        for name in ("loud", "quiet")
    }
    assert all(a > 100 * b for a, b in zip(scanned["loud"], scanned["quiet"], strict=True))
    assert loud["ranks"] is None or loud["ranks"][0] > quiet["ranks"][0]
    assert result.summary()["target"]["kept"] <= 0.5


def test_a_failed_allocation_leaves_the_model_untouched() -> None:
    zoo_entry = torchslim.zoo.get("tiny-resnet8")
    model = zoo_entry.load()
    before = copy.deepcopy(model)
    config = sensitivity("macs=0.5", "tucker2", scan_keep=(0.75,))  # cannot reach 0.5 kept
    with pytest.raises(ConfigError, match="scan_keep"):
        factorize_(
            model, config, zoo_entry.calibration_batches(1), tuple(zoo_entry.example_inputs(1))
        )
    assert same_state(model, before) and str(model) == str(before) and no_hooks(model)


def test_bad_allocation_values_get_one_clear_error() -> None:
    with pytest.raises(ConfigError, match='Did you mean "sensitivity"'):
        FactorizeConfig(target="params=0.5", allocation="sensitivty")
    with pytest.raises(ConfigError, match="give target"):
        FactorizeConfig(energy=0.9, allocation="sensitivity")
    with pytest.raises(ConfigError, match="scan_keep"):
        FactorizeConfig(target="params=0.5", allocation="sensitivity", scan_keep=(0.5, 1.5))
    model = TwoBranches()
    with pytest.raises(ConfigError, match="calibration"):
        factorize_(model, sensitivity("params=0.5"))


def test_sensitivity_allocation_from_the_command_line(tmp_path: Path) -> None:
    out = tmp_path / "lr"
    args = ["factorize", "tiny-resnet8", "--method", "tucker2", "--target", "macs=0.5",
            "--allocation", "sensitivity", "--out", str(out), "--no-check-speed",
            "--json"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    stage = json.loads(result.stdout)["details"]["stages"][0]["summary"]
    assert stage["allocation"] == "sensitivity" and stage["target"]["kept"] <= 0.5
    torchslim.load(out)
    typo = CliRunner().invoke(app, [*args[:7], "sensitivty", "--out", str(tmp_path / "x")])
    assert typo.exit_code != 0 and "Did you mean" in str(typo.exception or typo.output)
    assert not (tmp_path / "x").exists()


def test_a_recipe_stage_takes_the_allocation_and_refuses_a_misspelt_key() -> None:
    from torchslim.pipeline import parse_recipe

    stage = "version: 1\nstages:\n  - step: factorize\n    target: macs=0.5\n    {}\n"
    options = parse_recipe(stage.format("allocation: sensitivity")).stages[0].options
    assert isinstance(options, FactorizeConfig) and options.allocation == "sensitivity"
    with pytest.raises(ConfigError, match='Did you mean "allocation"'):
        parse_recipe(stage.format("alocation: sensitivity"))

"""``torchslim prune``: the CLI contract, the artifact, fine-tuning and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import torchslim.zoo as zoo
from torchslim._io import load_tensors
from torchslim.cli import app
from torchslim.errors import ConfigError
from torchslim.prune import NMPruneConfig, StructuredPruneConfig, UnstructuredPruneConfig
from torchslim.prune.apply import config_from_words
from torchslim.prune.artifact import load_pruned_artifact


def _run(*args: str) -> dict[str, object]:
    result = CliRunner().invoke(app, ["prune", *args, "--json", "--repeats", "3"])
    assert result.exit_code == 0, result.output
    payload: dict[str, object] = json.loads(result.stdout)  # the trainer logs to stderr
    return payload


def test_cli_structured_json_contract_and_artifact_reloads(tmp_path: Path) -> None:
    out = tmp_path / "pruned"
    report = _run("tiny-resnet8", "--method", "l1", "--target", "macs=0.5", "--out", str(out))
    assert set(report) == {"model", "technique", "before", "after", "artifact", "details"}
    before, after, details = report["before"], report["after"], report["details"]
    assert isinstance(before, dict) and isinstance(after, dict) and isinstance(details, dict)
    assert after["params"] < before["params"]
    assert details["macs_after"] <= 0.52 * details["macs_before"]
    assert "PrunePlan" in details["plan"]
    entry = zoo.get("tiny-resnet8")
    model = load_pruned_artifact(entry.load(), out)
    assert entry.evaluate(model)["cosine_vs_reference"] == pytest.approx(
        after["metrics"]["cosine_vs_reference"], abs=1e-6
    )


def test_cli_nm_on_tiny_llama_masks_are_folded(tmp_path: Path) -> None:
    out = tmp_path / "nm"
    report = _run("tiny-llama", "--method", "nm", "--target", "2:4", "--out", str(out))
    details = report["details"]
    assert isinstance(details, dict) and details["sparsity"] == pytest.approx(0.5)
    weights = load_tensors(out / "model.safetensors")
    # folded: a plain weight, under the transformers model's own name (no zoo wrapper prefix)
    q = weights["model.layers.0.self_attn.q_proj.weight"]
    assert not any("parametrizations" in key for key in weights)
    groups = q.reshape(-1, 4)
    assert bool(((groups != 0).sum(1) <= 2).all())


def test_cli_bad_target_is_one_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["prune", "tiny-cnn", "--target", "macs=1.5", "--out", str(tmp_path / "x")]
    )
    assert result.exit_code != 0
    assert isinstance(result.exception, ConfigError)
    assert "target_macs_ratio must be a number in [0, 1)" in str(result.exception)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("method", "target", "expected"),
    [
        ("l2", "macs=0.5", StructuredPruneConfig(target_macs_ratio=0.5)),
        ("bn", "params=0.3", StructuredPruneConfig(target_params_ratio=0.3, importance="bn_scale")),
        ("l1", "ratio=0.3", StructuredPruneConfig(uniform_ratio=0.3, importance="l1")),
        ("magnitude", "sparsity=0.9", UnstructuredPruneConfig(sparsity=0.9)),
        ("taylor", "sparsity=0.5", UnstructuredPruneConfig(sparsity=0.5, method="taylor")),
        ("nm", "2:4", NMPruneConfig(2, 4)),
        ("wanda", "2:4", NMPruneConfig(2, 4, method="wanda")),
        ("wanda", "sparsity=0.5", UnstructuredPruneConfig(sparsity=0.5, method="wanda")),
    ],
)
def test_words_to_config(method: str, target: str, expected: object) -> None:
    assert config_from_words(method, target) == expected


@pytest.mark.parametrize(
    ("method", "target", "message"),
    [
        ("nm", "sparsity=0.5", "N:M sparsity is --method nm"),
        ("bn", "2:4", "N:M sparsity is --method nm"),
        ("magnitude", "macs=0.5", "structured pruning"),
        ("bn", "sparsity=0.5", "sparsity=... takes"),
        ("l2", "speed=2", "unknown --target kind"),
        ("l2", "macs=half", "--target must be"),
        ("random", "macs=0.5", "--method must be one of"),
    ],
)
def test_bad_words_are_config_errors(method: str, target: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_words(method, target)


def test_config_dict_round_trip_and_unknown_key_hint() -> None:
    config = StructuredPruneConfig(target_macs_ratio=0.5, ignore=("fc",))
    assert StructuredPruneConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match='Did you mean "sparsity"'):
        UnstructuredPruneConfig.from_dict({"sparsty": 0.5})


@pytest.mark.assets
@pytest.mark.slow  # three evaluations on the 10 000 test images + a short fine-tune: ~70 s
def test_cli_unstructured_with_finetune_on_fashion_cnn(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    out = tmp_path / "sparse"
    report = _run(
        "fashion-cnn", "--method", "magnitude", "--target", "sparsity=0.8",
        "--finetune-epochs", "1", "--finetune-samples", "512", "--out", str(out),
    )  # fmt: skip
    details = report["details"]
    assert isinstance(details, dict)
    assert details["finetune"]["samples"] == 512
    assert "accuracy" in details["metrics_after_prune_before_finetune"]
    weights = load_tensors(out / "model.safetensors")
    pruned = [w for name, w in weights.items() if name.endswith("weight") and w.dim() > 1]
    zeros = sum(int((w == 0).sum()) for w in pruned) / sum(w.numel() for w in pruned)
    assert zeros == pytest.approx(0.8, abs=1e-3)  # masks held through fine-tuning, then folded

"""factorize, cluster, share_layers and pack as recipe stages on tiny zoo models: the artifact
reloads with the structure replayed and the same outputs; pack replaces model.safetensors by a
smaller model.packed that torchslim.load reads back, and refuses a corrupt one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import torchslim
from torchslim import zoo
from torchslim.errors import ModelLoadError
from torchslim.pipeline import RecipeError, load_recipe, parse_recipe
from torchslim.pipeline.runner import RunOptions, compress

FAST = RunOptions(repeats=2, measure_stages=False)
COSINE = "cosine_vs_reference"


def run(name: str, text: str, path: Path):  # type: ignore[no-untyped-def]
    return compress(zoo.get(name), parse_recipe("version: 1\nstages:\n" + text), path, FAST)


def same_outputs(name: str, path: Path, outcome) -> None:  # type: ignore[no-untyped-def]
    reloaded = torchslim.load(path)
    assert zoo.get(name).evaluate(reloaded)[COSINE] == pytest.approx(
        outcome.after.metrics[COSINE], abs=1e-6
    )


def test_prune_cluster_pack_writes_a_packed_artifact_that_loads_back(tmp_path: Path) -> None:
    stages = (
        "  - step: prune\n    method: magnitude\n    target: sparsity=0.5\n"
        "  - step: prune\n    method: magnitude\n    target: sparsity=0.8\n"
        "  - step: cluster\n    bits: 3\n"
        "  - step: pack\n"
    )
    outcome = run("tiny-cnn", stages, tmp_path / "out")
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert "model.packed" in files and "model.safetensors" not in files
    packed = (tmp_path / "out" / "model.packed").stat().st_size
    assert outcome.after.size_bytes == packed < outcome.before.size_bytes / 5
    summary = outcome.details["stages"][-1]["summary"]
    assert sum(summary["bytes_per_layer"].values()) <= packed
    model = torchslim.load(tmp_path / "out")
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d | torch.nn.Linear) and module.weight.numel() > 64:
            assert module.weight[module.weight != 0].unique().numel() <= 8
    same_outputs("tiny-cnn", tmp_path / "out", outcome)


def test_a_corrupt_packed_artifact_is_refused(tmp_path: Path) -> None:
    run("tiny-cnn", "  - step: cluster\n    bits: 2\n  - step: pack\n", tmp_path / "out")
    file = tmp_path / "out" / "model.packed"
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    file.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="checksum"):
        torchslim.load(tmp_path / "out")


def test_pack_must_be_the_last_stage() -> None:
    with pytest.raises(RecipeError, match="last stage"):
        parse_recipe("version: 1\nstages:\n  - step: pack\n  - step: cluster\n")


@pytest.mark.parametrize(
    ("name", "stage"),
    [
        ("tiny-bert", "  - step: factorize\n    method: whitened\n    energy: 0.8\n"
         "    check_speed: false\n    calibration_batches: 2\n"),
        ("tiny-resnet8", "  - step: factorize\n    method: tucker2\n    target: macs=0.3\n"
         "    check_speed: false\n"),
        ("tiny-bert", "  - step: share_layers\n    blocks: 1\n"),
    ],
)  # fmt: skip
def test_structural_steps_reload_with_their_structure(
    tmp_path: Path, name: str, stage: str
) -> None:
    outcome = run(name, stage, tmp_path / "out")
    summary = outcome.details["stages"][0]["summary"]
    if "layers_factorized" in summary:
        assert summary["layers_factorized"] >= 1
        assert summary["params_after"] < summary["params_before"]
    else:
        assert summary["unique_params_after"] < summary["unique_params_before"]
    same_outputs(name, tmp_path / "out", outcome)


def test_the_deep_compression_recipe_reads() -> None:
    recipe = load_recipe("cnn-deep-compression")
    assert [s.step for s in recipe.stages][-3:] == ["cluster", "finetune", "pack"]


def test_the_share_layers_recipe_distils_with_adamw_and_a_bad_optimizer_is_refused() -> None:
    distill = load_recipe("minilm-share-layers-distill").stages[-1]
    assert distill.options.optimizer == "adamw"
    with pytest.raises(RecipeError, match="optimizer must be one of"):
        parse_recipe("version: 1\nstages:\n  - step: distill\n    optimizer: adam\n")

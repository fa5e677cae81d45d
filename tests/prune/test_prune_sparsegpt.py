"""SparseGPT: exact sparsity patterns, weight updates that beat masking alone, sequential walk."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from torchslim import zoo
from torchslim.errors import ConfigError
from torchslim.prune import NMPruneConfig, UnstructuredPruneConfig, fold_masks_, prune_
from torchslim.prune.apply import config_from_words
from torchslim.prune.sparsegpt import sparsegpt_weight

torch.set_num_threads(1)


def _correlated_inputs(n: int = 512, features: int = 64, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(features, features, generator=generator) / features**0.5
    scales = torch.logspace(-1, 1, features)  # some inputs 100x louder than others
    return (torch.randn(n, features, generator=generator) @ mixing) * scales  # (n, in)


def _output_error(weight: torch.Tensor, approx: torch.Tensor, x: torch.Tensor) -> float:
    return float(((x @ (weight - approx).T) ** 2).mean())


def test_unstructured_mask_is_exact_and_the_update_beats_wanda() -> None:
    x = _correlated_inputs()
    weight = torch.randn(32, 64, generator=torch.Generator().manual_seed(1))
    hessian = 2 * x.T @ x / len(x)  # (in, in)
    pruned, keep = sparsegpt_weight(weight, hessian, sparsity=0.5)
    assert keep.shape == weight.shape and int((~keep).sum()) == weight.numel() // 2
    assert bool((pruned[~keep] == 0).all()) and bool((pruned[keep] != 0).all())
    wanda = weight.abs() * x.norm(dim=0)[None, :]  # (out, in)
    wanda_keep = wanda >= wanda.flatten().kthvalue(weight.numel() // 2).values
    wanda_error = _output_error(weight, weight * wanda_keep, x)
    assert _output_error(weight, pruned, x) < 0.8 * wanda_error


def test_nm_pattern_keeps_n_of_every_m() -> None:
    x = _correlated_inputs(features=48)
    weight = torch.randn(8, 48, generator=torch.Generator().manual_seed(2))
    pruned, keep = sparsegpt_weight(weight, 2 * x.T @ x / len(x), 0.0, nm=(2, 4))
    assert bool((keep.reshape(-1, 4).sum(1) == 2).all())
    assert bool((pruned.reshape(-1, 4) != 0).sum(1).eq(2).all())


def test_dead_inputs_and_a_singular_hessian_are_handled() -> None:
    x = _correlated_inputs(n=16, features=32)  # 16 tokens: X^T X has rank 16 < 32
    x[:, 3] = 0.0  # an input that never fires
    weight = torch.randn(4, 32)
    pruned, keep = sparsegpt_weight(weight, 2 * x.T @ x / len(x), 0.5)
    assert torch.isfinite(pruned).all() and int((~keep).sum()) == 64


@pytest.fixture(scope="module")
def llama() -> tuple[nn.Module, list[tuple[torch.Tensor, ...]], torch.Tensor]:
    entry = zoo.get("tiny-llama")
    return entry.load(), entry.calibration_batches(8, batch_size=4), entry.example_inputs(8)[0]


@pytest.mark.parametrize(
    "sparsegpt, wanda",
    [
        (UnstructuredPruneConfig(0.5, "sparsegpt", "layer"),
         UnstructuredPruneConfig(0.5, "wanda", "layer")),
        (NMPruneConfig(2, 4, method="sparsegpt"), NMPruneConfig(2, 4, method="wanda")),
    ],
)  # fmt: skip
def test_sequential_sparsegpt_on_a_decoder_beats_wanda(llama: tuple, sparsegpt, wanda) -> None:
    model, batches, x = llama
    with torch.no_grad():
        reference = model(x)
    errors = {}
    for config in (sparsegpt, wanda):
        pruned = copy.deepcopy(model)
        result = prune_(pruned, config, calibration=batches)
        assert result.sparsity == pytest.approx(0.5, abs=0.01)
        fold_masks_(pruned)
        linears = [
            m for n, m in pruned.named_modules() if isinstance(m, nn.Linear) and "layers" in n
        ]
        assert all(float((m.weight == 0).float().mean()) >= 0.5 for m in linears)
        with torch.no_grad():
            errors[config.method] = float(((pruned(x) - reference) ** 2).mean())
    assert errors["sparsegpt"] < errors["wanda"]


def test_bad_options_are_one_clear_error_and_leave_the_model_untouched(llama: tuple) -> None:
    model, _, _ = llama
    with pytest.raises(ConfigError, match="scope='layer'"):
        UnstructuredPruneConfig(0.5, "sparsegpt", "global")
    assert config_from_words("sparsegpt", "sparsity=0.5").scope == "layer"  # type: ignore[union-attr]
    assert config_from_words("sparsegpt", "2:4").method == "sparsegpt"  # type: ignore[union-attr]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match="calibration"):
        prune_(model, UnstructuredPruneConfig(0.5, "sparsegpt", "layer"))
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_the_sparsegpt_recipe_prunes_two_of_every_four(tmp_path) -> None:
    from torchslim.pipeline import load_recipe
    from torchslim.pipeline.runner import RunOptions, compress

    options = RunOptions(repeats=3, measure_stages=False)
    outcome = compress(zoo.get("tiny-llama"), load_recipe("llm-sparsegpt-2of4"), tmp_path / "s",
                       options)  # fmt: skip
    assert outcome.details["stages"][0]["summary"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert (tmp_path / "s" / "manifest.json").is_file()

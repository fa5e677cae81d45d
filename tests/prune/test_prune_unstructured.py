"""Unstructured and N:M masks: exact sparsity, N:M patterns, folding."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from torchslim.errors import ConfigError
from torchslim.prune import NMPruneConfig, UnstructuredPruneConfig, fold_masks_, prune_


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8), nn.Conv2d(8, 8, 1))


def _zero_fraction(module: nn.Module) -> float:
    return float((module.weight == 0).float().mean())


def test_global_sparsity_hits_ratio_exactly() -> None:
    model = _mlp()
    result = prune_(model, UnstructuredPruneConfig(sparsity=0.6, scope="global"))
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    total = sum(w.numel() for w in weights)
    zeros = sum(int((w == 0).sum()) for w in weights)
    assert zeros == round(0.6 * total)
    assert result.sparsity == pytest.approx(0.6, abs=1e-3)


def test_layer_sparsity_hits_ratio_in_every_layer() -> None:
    model = _mlp()
    prune_(model, UnstructuredPruneConfig(sparsity=0.5, scope="layer", method="l2"))
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            assert int((module.weight == 0).sum()) == round(0.5 * module.weight.numel())


def test_ignore_leaves_layer_dense() -> None:
    model = _mlp()
    prune_(model, UnstructuredPruneConfig(sparsity=0.5, scope="layer", ignore=("0",)))
    assert _zero_fraction(model[0]) == 0.0
    assert _zero_fraction(model[2]) == pytest.approx(0.5)


def test_magnitude_pruning_removes_smallest_weights() -> None:
    model = _mlp()
    original = model[0].weight.detach().clone()
    prune_(model, UnstructuredPruneConfig(sparsity=0.5, scope="layer"))
    kept = original[model[0].weight != 0].abs()
    removed = original[model[0].weight == 0].abs()
    assert kept.min() >= removed.max()


def test_taylor_needs_and_uses_gradients() -> None:
    model = _mlp()
    with pytest.raises(ConfigError, match="gradients"):
        prune_(model, UnstructuredPruneConfig(sparsity=0.5, method="taylor"))
    model[:3](torch.randn(4, 16)).pow(2).sum().backward()
    result = prune_(model[:3], UnstructuredPruneConfig(sparsity=0.5, method="taylor"))
    assert result.sparsity == pytest.approx(0.5, abs=1e-3)


@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 4), (3, 8)])
def test_nm_pattern_holds_in_every_group(n: int, m: int) -> None:
    model = _mlp()
    prune_(model, NMPruneConfig(n=n, m=m))
    linear = model[2].weight.detach()  # (8, 32)
    groups = (linear != 0).reshape(-1, m).sum(1)
    assert torch.all(groups == n)
    conv = model[3].weight.detach().movedim(1, -1)  # (8, 1, 1, 8)
    assert torch.all((conv != 0).reshape(-1, m).sum(-1) == n)


def test_masks_survive_fine_tuning_and_fold_removes_hooks() -> None:
    model = _mlp()
    prune_(model, UnstructuredPruneConfig(sparsity=0.5))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(3):
        optimizer.zero_grad()
        model[:3](torch.randn(4, 16)).sum().backward()
        optimizer.step()
    zeros_before = [int((m.weight == 0).sum()) for m in (model[0], model[2])]
    assert fold_masks_(model) == 3
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert [int((m.weight == 0).sum()) for m in (model[0], model[2])] == zeros_before
    assert set(model.state_dict()) == set(_mlp().state_dict())


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"sparsity": 1.0}, "sparsity"),
        ({"sparsity": -0.1}, "sparsity"),
        ({"sparsity": 0.5, "method": "random"}, "method"),
        ({"sparsity": 0.5, "scope": "block"}, "scope"),
    ],
)
def test_bad_unstructured_config_names_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        UnstructuredPruneConfig(**kwargs)  # type: ignore[arg-type]


def test_bad_nm_config() -> None:
    with pytest.raises(ConfigError, match="n must"):
        NMPruneConfig(n=4, m=4)
    with pytest.raises(ConfigError, match="m must"):
        NMPruneConfig(n=1, m=1)


def test_tied_lm_head_left_dense_and_still_tied() -> None:
    from torchslim.zoo import get

    model = get("tiny-gpt2").load()
    inner = model.model
    assert inner.lm_head.weight is inner.transformer.wte.weight
    prune_(model, UnstructuredPruneConfig(sparsity=0.5))
    fold_masks_(model)
    assert inner.lm_head.weight is inner.transformer.wte.weight  # not untied into two copies
    assert float((inner.lm_head.weight == 0).float().mean()) < 0.01
    c_fc = inner.transformer.h[0].mlp.c_fc  # HF Conv1D: pruned like a Linear
    assert float((c_fc.weight == 0).float().mean()) > 0.3


def test_nm_on_conv1d_groups_along_its_input_dimension() -> None:
    from torchslim.zoo import get

    model = get("tiny-gpt2").load()
    prune_(model, NMPruneConfig(2, 4))
    weight = model.model.transformer.h[0].attn.c_attn.weight  # (in=32, out=96)
    groups = weight.detach().t().reshape(-1, 4)  # consecutive inputs of one output
    assert bool(((groups != 0).sum(1) <= 2).all())


def test_wanda_keeps_weights_on_loud_inputs_that_magnitude_would_drop() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.1, 1.0, 1.0, 1.0]]))
    x = torch.ones(8, 4) * torch.tensor([100.0, 1.0, 1.0, 1.0])  # feature 0 is 100x louder
    magnitude = nn.Linear(4, 1, bias=False)
    magnitude.load_state_dict(layer.state_dict())
    prune_(magnitude, UnstructuredPruneConfig(sparsity=0.25, scope="layer"))
    prune_(layer, UnstructuredPruneConfig(sparsity=0.25, method="wanda", scope="layer"), (x,))
    assert magnitude.weight[0, 0] == 0  # smallest |w|
    assert layer.weight[0, 0] != 0 and int((layer.weight == 0).sum()) == 1  # |w| x ||x|| = 10


def test_wanda_nm_uses_calibration_batches_and_keeps_the_pattern() -> None:
    model = _mlp()[:3]
    batches = [(torch.randn(4, 16),) for _ in range(3)]
    prune_(model, NMPruneConfig(2, 4, method="wanda"), calibration=batches)
    groups = model[0].weight.detach().reshape(-1, 4)
    assert bool(((groups != 0).sum(1) == 2).all())
    with pytest.raises(ConfigError, match="calibration batches"):
        prune_(_mlp()[:3], NMPruneConfig(2, 4, method="wanda"))


def test_weight_mask_is_packed_and_saved_as_bool() -> None:
    from torchslim.prune.unstructured import WeightMask

    torch.manual_seed(0)
    layer = torch.nn.Linear(13, 7)  # 91 entries: not a multiple of 8
    mask = torch.rand(7, 13) > 0.5
    parametrize.register_parametrization(layer, "weight", WeightMask(mask))
    parametrization = layer.parametrizations.weight[0]
    assert parametrization.packed.numel() == 12 and parametrization.packed.dtype == torch.uint8
    assert torch.equal(parametrization.mask, mask)
    assert torch.equal(layer.weight, layer.parametrizations.weight.original * mask)
    state = layer.state_dict()
    assert state["parametrizations.weight.0.mask"].dtype == torch.bool
    assert "parametrizations.weight.0.packed" not in state
    other = torch.nn.Linear(13, 7)
    parametrize.register_parametrization(other, "weight", WeightMask(torch.ones(7, 13)))
    other.load_state_dict(state)
    assert torch.equal(other.parametrizations.weight[0].mask, mask)
    assert torch.equal(other.weight, layer.weight)

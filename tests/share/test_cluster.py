"""cluster_: at most 2^bits shared values per layer, pruned zeros stay +0.0, each centroid's
gradient is the sum of its weights' gradients, an oversized codebook is refused."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from models import tiny_convnet
from torchslim.errors import ConfigError
from torchslim.prune.unstructured import apply_masks_, folded_copy
from torchslim.share import ClusterConfig, ClusteredWeight, cluster_
from torchslim.share.primitives import kmeans_1d


def test_kmeans_finds_well_separated_clusters() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([-3.0, -1.0, 0.5, 2.0])
    values = centres[torch.randint(0, 4, (400,), generator=g)] + 0.01 * torch.randn(
        400, generator=g
    )
    codebook, codes = kmeans_1d(values, 4)
    torch.testing.assert_close(codebook, centres, atol=0.01, rtol=0)
    assert (codebook[codes] - values).abs().max() < 0.05  # every value in its own cluster


def test_layers_hold_at_most_two_to_the_bits_values_and_pruned_zeros_stay_positive_zero() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 8))
    keep = torch.rand(32, 32) > 0.7
    apply_masks_(model, {"0": keep})
    result = cluster_(model, ClusterConfig(bits=3))
    assert set(result.layers) == {"0", "2"}
    folded = folded_copy(model)
    for layer in (folded[0], folded[2]):
        nonzero = layer.weight[layer.weight != 0]
        assert nonzero.unique().numel() <= 8
    zeros = folded[0].weight[~keep]
    assert torch.equal(zeros.view(torch.int32), torch.zeros_like(zeros).view(torch.int32))
    assert int((folded[0].weight != 0).sum()) == int(keep.sum())


def test_each_centroid_gradient_is_the_sum_of_its_weights_gradients() -> None:
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 4, (6, 5), generator=g)
    keep = torch.rand(6, 5, generator=g) > 0.3
    parametrization = ClusteredWeight(torch.tensor([-1.0, 0.1, 0.5, 2.0]), codes, keep)
    upstream = torch.randn(6, 5, generator=g)
    (parametrization(torch.empty(6, 5)) * upstream).sum().backward()
    grad = parametrization.codebook.grad
    assert grad is not None
    for k in range(4):
        torch.testing.assert_close(grad[k], upstream[(codes == k) & keep].sum())


def test_a_codebook_larger_than_the_weights_is_refused_and_the_model_untouched() -> None:
    model = tiny_convnet()  # its first conv has 36 weights
    before = copy.deepcopy(model)
    with pytest.raises(ConfigError, match="codebook of 64 entries"):
        cluster_(model, ClusterConfig(bits=6))
    assert str(model) == str(before)
    pairs = zip(model.state_dict().values(), before.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    with pytest.raises(ConfigError, match="bits"):
        ClusterConfig(bits=9)

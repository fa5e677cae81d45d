"""share_layers_: grouped layers become one module (parameters stored and counted once), the
forward still runs; a grouping that does not divide the stack is refused, the model untouched."""

from __future__ import annotations

import copy

import pytest
import torch

from models import padded_tokens, tiny_sentence_encoder
from torchslim.errors import ConfigError
from torchslim.share import ShareLayersConfig, share_layers_, unique_params


def test_two_layers_share_one_block() -> None:
    model = tiny_sentence_encoder()
    layers = model.encoder.encoder.layer
    one_layer = sum(p.numel() for p in layers[1].parameters())
    result = share_layers_(model, ShareLayersConfig(blocks=1))
    assert result.container == "encoder.encoder.layer" and result.groups == [[0, 1]]
    assert layers[0] is layers[1]
    assert unique_params(model) == result.params_after == result.params_before - one_layer
    ids, mask = padded_tokens()
    assert torch.isfinite(model(ids, mask)).all()


def test_mean_init_averages_the_group() -> None:
    model = tiny_sentence_encoder()
    layers = model.encoder.encoder.layer
    expected = (layers[0].output.dense.weight + layers[1].output.dense.weight).detach() / 2
    share_layers_(model, ShareLayersConfig(blocks=1, init="mean"))
    torch.testing.assert_close(layers[1].output.dense.weight.detach(), expected)


def test_blocks_that_do_not_divide_the_stack_are_refused_and_the_model_untouched() -> None:
    model = tiny_sentence_encoder()
    before = copy.deepcopy(model)
    with pytest.raises(ConfigError, match="divide"):
        share_layers_(model, ShareLayersConfig(blocks=2))
    layers = model.encoder.encoder.layer
    assert layers[0] is not layers[1] and unique_params(model) == unique_params(before)
    with pytest.raises(ConfigError, match="not a ModuleList"):
        share_layers_(model, ShareLayersConfig(blocks=1, container="encoder.embeddings"))

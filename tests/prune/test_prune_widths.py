"""Config-width pruning of transformers models and the graph's named refusals."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from architectures import hugging_face
from torchslim.prune import PruneError, StructuredPruneConfig, build_width_plan, prune_
from torchslim.prune._inputs import positional_inputs

pytestmark = pytest.mark.usefixtures("one_thread")


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(model: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    now = model.state_dict()
    return set(now) == set(state) and all(torch.equal(now[k], v) for k, v in state.items())


def test_width_plan_prints_before_apply_and_keeps_output_setting_widths() -> None:
    model, inputs, _ = hugging_face("bert")  # a bare encoder: hidden_size is its output width
    state = _state(model)
    args = positional_inputs(model, inputs)
    plan = build_width_plan(model, args, StructuredPruneConfig(uniform_ratio=0.5))
    text = str(plan)
    assert "intermediate_size: 256 -> 128" in text
    assert "hidden_size: kept (it sets the model's output shape)" in text
    assert _same(model, state)  # printing a plan changes nothing
    plan.apply()
    assert model.config.intermediate_size == 128
    assert model.encoder.layer[0].intermediate.dense.out_features == 128


def test_llama_widths_keep_whole_heads_and_every_layer_alike() -> None:
    model, inputs, _ = hugging_face("llama_gqa")
    prune_(model, StructuredPruneConfig(uniform_ratio=0.5), inputs)
    config = model.config
    assert config.hidden_size < 64 and config.intermediate_size == 64
    assert config.head_dim == 8 and config.num_key_value_heads == 2  # heads untouched
    for layer in model.model.layers:
        assert layer.mlp.up_proj.out_features == 64
        assert layer.self_attn.q_proj.in_features == config.hidden_size


def test_width_plan_failures_leave_the_model_untouched() -> None:
    model, inputs, _ = hugging_face("gpt2")
    state = _state(model)
    with pytest.raises(PruneError, match="`ignore` names modules"):
        prune_(model, StructuredPruneConfig(target_macs_ratio=0.5, ignore=("lm_head",)), inputs)
    with pytest.raises(PruneError, match="out of reach"):
        prune_(model, StructuredPruneConfig(target_params_ratio=0.99), inputs)
    assert _same(model, state)


def test_constant_view_freezes_its_features_and_the_error_names_it() -> None:
    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.mix = nn.Linear(16, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x).reshape(x.shape[0], 8, 16)  # (B, C, HW): C is a constant
            return self.mix(y)

    model, x = Head(), torch.randn(2, 3, 4, 4)
    state = _state(model)
    with pytest.raises(PruneError, match=r"conv: view reshape has a constant size"):
        prune_(model, StructuredPruneConfig(target_macs_ratio=0.5), x)
    assert _same(model, state)


def test_tied_embedding_and_lm_head_are_sliced_once_and_stay_tied() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed, self.mlp = nn.Embedding(50, 32), nn.Linear(32, 32)
            self.norm, self.lm_head = nn.LayerNorm(32), nn.Linear(32, 50, bias=False)
            self.lm_head.weight = self.embed.weight

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            x = self.embed(ids)  # (B, T, C)
            return self.lm_head(self.norm(x + torch.relu(self.mlp(x))))  # (B, T, vocab)

    torch.manual_seed(0)
    model, ids = Tied(), torch.randint(0, 50, (2, 6))
    prune_(model, StructuredPruneConfig(uniform_ratio=0.5), ids)
    assert model.lm_head.weight is model.embed.weight
    assert model.embed.weight.shape == (50, 16) and model.norm.normalized_shape == (16,)
    assert model(ids).shape == (2, 6, 50)


def test_latency_target_words_and_one_target_only() -> None:
    from torchslim.errors import ConfigError
    from torchslim.prune.apply import config_from_words

    config = config_from_words("l2", "latency=0.3")
    assert isinstance(config, StructuredPruneConfig) and config.target_latency_ratio == 0.3
    with pytest.raises(ConfigError, match="exactly one"):
        StructuredPruneConfig(target_macs_ratio=0.5, target_latency_ratio=0.5)


def test_flatten_with_batch_one_keeps_the_last_stage_prunable() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4)
    )
    prune_(model, StructuredPruneConfig(uniform_ratio=0.5), torch.randn(1, 3, 8, 8))
    assert model[0].out_channels == model[4].in_features == 8


def test_drop_layers_then_widths_meet_the_target_and_reload_plainly(tmp_path: object) -> None:
    import transformers

    model, inputs, _ = hugging_face("llama_gqa")
    args = positional_inputs(model, inputs)
    config = StructuredPruneConfig(target_macs_ratio=0.5, drop_layers=(1,))
    result = prune_(model, config, inputs)
    assert model.config.num_hidden_layers == 1 and len(model.model.layers) == 1
    assert result.macs_before is not None and result.macs_after is not None
    assert 0.47 <= result.macs_after / result.macs_before <= 0.5
    model.save_pretrained(tmp_path)
    plain = transformers.LlamaForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(*args).logits, model(*args).logits)


def test_drop_layers_on_a_plain_module_is_refused_untouched() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    state = _state(model)
    with pytest.raises(PruneError, match="drop_layers is for transformers models"):
        prune_(model, StructuredPruneConfig(uniform_ratio=0.5, drop_layers=(0,)), torch.ones(1, 4))
    assert _same(model, state)


def test_width_plan_refuses_an_importance_it_would_not_use() -> None:
    model, inputs, _ = hugging_face("llama_gqa")
    with pytest.raises(PruneError, match="importance 'taylor' is not used"):
        prune_(model, StructuredPruneConfig(uniform_ratio=0.5, importance="taylor"), inputs)

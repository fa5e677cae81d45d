"""Structured pruning on every tiny architecture: smaller, runs, right shape, reloads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import torchslim.zoo as zoo
from torchslim._compress import write_model_artifact
from torchslim._io import load_tensors
from torchslim.errors import ConfigError
from torchslim.prune import (
    PruneError,
    RulePlan,
    StructuredPruneConfig,
    build_rule_plan,
    from_pretrained,
    load_pruned,
    prune_,
)
from torchslim.zoo._hf import HuggingFaceOutput

TINY = ["tiny-bert", "tiny-llama", "tiny-gpt2", "tiny-vit", "tiny-resnet", "tiny-mobilenetv2",
        "tiny-cnn", "tiny-resnet8", "convnext"]  # fmt: skip
HF = {"tiny-bert", "tiny-llama", "tiny-gpt2", "tiny-vit", "tiny-resnet", "tiny-mobilenetv2",
      "convnext"}  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")


def _convnext() -> nn.Module:
    from transformers import ConvNextConfig, ConvNextForImageClassification

    torch.manual_seed(0)
    config = ConvNextConfig(num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], num_labels=10)
    return HuggingFaceOutput(ConvNextForImageClassification(config), ("pixel_values",)).eval()


def _load(name: str) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    if name == "convnext":
        torch.manual_seed(1)
        return _convnext(), (torch.randn(2, 3, 32, 32),)
    entry = zoo.get(name)
    return entry.load().eval(), tuple(entry.example_inputs(2))


@pytest.mark.parametrize("name", TINY)
def test_structured_pruning_on_tiny_zoo(name: str, tmp_path: Path) -> None:
    model, inputs = _load(name)
    shape = model(*inputs).shape
    result = prune_(model, StructuredPruneConfig(uniform_ratio=0.5), inputs)
    params = sum(p.numel() for p in model.parameters())
    assert params == result.params_after < result.params_before
    assert result.macs_after is not None and result.macs_before is not None
    assert result.macs_after < result.macs_before
    with torch.no_grad():
        pruned_output = model(*inputs)
    assert pruned_output.shape == shape and torch.isfinite(pruned_output).all()
    assert (isinstance(result.plan, RulePlan)) == (name in HF)
    # the artifact reloads into the original architecture, same outputs
    out = write_model_artifact(tmp_path / "artifact", model, {"pruned_shapes": result.record})
    manifest = json.loads((out / "manifest.json").read_text())
    fresh, _ = _load(name)
    load_pruned(fresh, manifest["pruned_shapes"], load_tensors(out / "model.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(*inputs), pruned_output)


@pytest.mark.parametrize("name", sorted(HF))
def test_hf_save_pretrained_round_trip(name: str, tmp_path: Path) -> None:
    model, inputs = _load(name)
    prune_(model, StructuredPruneConfig(uniform_ratio=0.5), inputs)
    inner = model.model  # the transformers model inside the zoo's tensor wrapper
    inner.save_pretrained(tmp_path)
    kwargs = {"add_pooling_layer": False} if name == "tiny-bert" else {}  # as the zoo builds it
    reloaded = HuggingFaceOutput(from_pretrained(tmp_path, **kwargs), model.input_names)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(*inputs), model(*inputs))
    assert sum(p.numel() for p in reloaded.parameters()) == sum(
        p.numel() for p in model.parameters()
    )


def test_llama_gqa_prunes_whole_kv_groups_and_config_loads_without_torchslim(
    tmp_path: Path,
) -> None:
    from transformers import LlamaForCausalLM

    model, inputs = _load("tiny-llama")
    prune_(model, StructuredPruneConfig(uniform_ratio=0.5), inputs)
    attention = model.model.model.layers[0].self_attn
    assert attention.q_proj.out_features == 2 * 16  # 4 query heads -> 2 (one KV group of 2)
    assert attention.k_proj.out_features == attention.v_proj.out_features == 16  # 2 KV -> 1
    assert attention.o_proj.in_features == 2 * 16
    config = model.model.config
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (2, 1, 16)
    assert config.intermediate_size == 64
    model.model.save_pretrained(tmp_path)
    plain = LlamaForCausalLM.from_pretrained(tmp_path).eval()  # no torchslim code involved
    with torch.no_grad():
        torch.testing.assert_close(plain(inputs[0]).logits, model(*inputs))


def test_bert_heads_q_k_v_o_consistent() -> None:
    model, inputs = _load("tiny-bert")
    prune_(model, StructuredPruneConfig(uniform_ratio=0.5), inputs)
    layer = model.model.encoder.layer[1]
    self_attention = layer.attention.self
    assert self_attention.num_attention_heads == 1 and self_attention.all_head_size == 16
    for projection in (self_attention.query, self_attention.key, self_attention.value):
        assert projection.out_features == 16 and projection.in_features == 32
    assert layer.attention.output.dense.in_features == 16
    assert layer.intermediate.dense.out_features == layer.output.dense.in_features == 32


def test_removed_heads_are_the_least_important() -> None:
    model, inputs = _load("tiny-gpt2")
    attention = model.model.transformer.h[0].attn
    with torch.no_grad():  # make head 0 tiny in every projection: it must be the one removed
        attention.c_attn.weight[:, 0:16] *= 1e-3
        attention.c_attn.weight[:, 32:48] *= 1e-3
        attention.c_attn.weight[:, 64:80] *= 1e-3
        attention.c_proj.weight[0:16] *= 1e-3
    kept_q = attention.c_attn.weight[:, 16:32].clone()
    prune_(model, StructuredPruneConfig(uniform_ratio=0.5, ignore=("re:.*mlp",)), inputs)
    pruned = model.model.transformer.h[0].attn
    assert pruned.num_heads == 1 and pruned.split_size == 16
    torch.testing.assert_close(pruned.c_attn.weight[:, 0:16], kept_q)
    assert model.model.transformer.h[0].mlp.c_fc.nf == 128  # ignored: untouched


def test_macs_target_met_on_vit() -> None:
    model, inputs = _load("tiny-vit")
    result = prune_(model, StructuredPruneConfig(target_macs_ratio=0.3), inputs)
    assert result.macs_before is not None and result.macs_after is not None
    assert result.macs_after <= 0.7 * result.macs_before
    assert result.macs_after >= 0.5 * result.macs_before  # not wildly overshot


def test_unreachable_target_names_what_cannot_be_pruned_and_leaves_model() -> None:
    model, inputs = _load("tiny-llama")  # embeddings + LM head hold most parameters
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(PruneError, match=r"out of reach.*embed_tokens"):
        prune_(model, StructuredPruneConfig(target_params_ratio=0.9), inputs)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_custom_layer_reported_by_name() -> None:
    class Gate(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(8))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.scale

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2, self.gate = nn.Linear(8, 32), nn.Linear(32, 8), Gate()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.gate(self.fc2(torch.relu(self.fc1(x))))

    model, x = Block(), torch.randn(2, 8)
    plan = build_rule_plan(model, (x,), StructuredPruneConfig(uniform_ratio=0.25))
    assert "gate" in plan.unsupported and "NOT PRUNABLE: gate" in str(plan)
    plan.apply()
    assert model.fc1.out_features == 24 and model(x).shape == (2, 8)


def test_rule_that_does_not_fit_raises_and_leaves_model_untouched() -> None:
    class Leaky(nn.Module):  # fc1's hidden units are also read outside the fc1 -> fc2 pair
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 8)
            self.side = nn.Parameter(torch.ones(16))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            hidden = torch.relu(self.fc1(x))
            return self.fc2(hidden) + (hidden * self.side).sum(-1, keepdim=True)

    model, x = Leaky(), torch.randn(2, 8)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    plan = build_rule_plan(model, (x,), StructuredPruneConfig(uniform_ratio=0.0))
    plan.groups[0].keep = torch.arange(8)  # what a rule alone would do: fc1 -> fc2 only
    with pytest.raises(PruneError, match=r"does not run.*`ignore`"):
        plan.apply()
    assert model.fc1.out_features == 16
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    # the dependency graph follows the side read and slices `side` with fc1's units
    prune_(model, StructuredPruneConfig(uniform_ratio=0.5), (x,))
    assert model.fc1.out_features == model.side.shape[0] == model.fc2.in_features == 8
    assert model(x).shape == (2, 8)


@pytest.mark.parametrize("field", ["uniform_ratio", "target_params_ratio"])
@pytest.mark.parametrize("value", [1.0, -0.1, 3])
def test_ratio_outside_unit_interval_names_the_field(field: str, value: float) -> None:
    with pytest.raises(ConfigError, match=rf"{field} must be a number in \[0, 1\)"):
        StructuredPruneConfig(**{field: value})


@pytest.mark.assets
def test_minilm_30_percent_of_heads_and_neurons_round_trips(tmp_path: Path) -> None:
    entry = zoo.get("minilm")
    model = entry.load()
    inputs = tuple(entry.example_inputs(2, seq_len=32))
    result = prune_(model, StructuredPruneConfig(uniform_ratio=0.3), inputs)
    for layer in model.encoder.encoder.layer:
        assert layer.attention.self.num_attention_heads == 8  # 12 heads - round(3.6)
        assert layer.intermediate.dense.out_features == 1075  # 1536 - round(460.8)
    assert model.encoder.config.intermediate_size == 1075
    assert result.params_after < 0.86 * result.params_before
    with torch.no_grad():
        embeddings = model(*inputs)
    assert embeddings.shape == (2, 384)
    model.encoder.save_pretrained(tmp_path)
    reloaded = from_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(*inputs)[0], model.encoder(*inputs)[0])


def test_ignored_layer_keeps_the_config_width_honest() -> None:
    """A wrapped BERT whose second MLP `ignore` keeps whole: the config must not claim the
    pruned width for every layer (it would build a model that cannot load the weights)."""
    from transformers import BertConfig, BertModel

    class Wrapper(nn.Module):  # a wrapper fx cannot trace: pruned by the module rules
        def __init__(self) -> None:
            super().__init__()
            config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=2, intermediate_size=64)  # fmt: skip
            self.encoder = BertModel(config, add_pooling_layer=False)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.encoder(input_ids=ids).last_hidden_state.mean(1)

    ids = torch.randint(0, 50, (2, 8))
    ignored = StructuredPruneConfig(uniform_ratio=0.5, ignore=("re:.*layer\\.1\\..*",))
    model = Wrapper()
    prune_(model, ignored, (ids,))
    widths = [layer.intermediate.dense.out_features for layer in model.encoder.encoder.layer]
    assert widths == [32, 64]
    assert model.encoder.config.intermediate_size == 64  # not rewritten: widths differ
    uniform = Wrapper()
    prune_(uniform, StructuredPruneConfig(uniform_ratio=0.5), (ids,))
    assert uniform.encoder.config.intermediate_size == 32

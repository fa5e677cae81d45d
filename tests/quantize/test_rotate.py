"""Rotating a LLaMA-style decoder's residual stream keeps its float function, spreads outlier
channels, reloads from its artifact, and refuses models it cannot rotate without changing them."""

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from torchslim import zoo
from torchslim.errors import ConfigError
from torchslim.quantize._blocks import BlockWalkError
from torchslim.quantize.rotate import RotateConfig, hadamard, random_rotation, rotate_


def _logits(model, inputs):
    with torch.no_grad():
        out = model(*inputs)
    return out if isinstance(out, torch.Tensor) else out.logits


def _llama(tied: bool) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=96, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2,
                         tie_word_embeddings=tied)  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    for name, param in model.named_parameters():  # norms with non-trivial weights to fold
        if name.endswith("norm.weight"):
            param.data.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("n", [1, 2, 64])
def test_hadamard_rows_are_orthogonal(n):
    h = hadamard(n)
    assert torch.equal(h @ h.T, n * torch.eye(n, dtype=torch.float64))


@pytest.mark.parametrize("n", [64, 48, 576])  # 48 = 3 x 16, SmolLM2's 576 = 9 x 64
def test_random_rotation_is_orthogonal_and_seeded(n):
    q = random_rotation(n, torch.Generator().manual_seed(1))
    assert torch.allclose(q @ q.T, torch.eye(n, dtype=torch.float64), atol=1e-12)
    assert torch.equal(q, random_rotation(n, torch.Generator().manual_seed(1)))
    assert not torch.equal(q, random_rotation(n, torch.Generator().manual_seed(2)))


@pytest.mark.parametrize("tied", [False, True])
def test_rotation_keeps_the_float_function(tied):
    model = _llama(tied)
    ids = (torch.randint(0, 96, (2, 10)),)
    before = _logits(model, ids)
    result = rotate_(model, RotateConfig(seed=3))
    assert result["untied_head"] is tied and result["head_dim"] == 12
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    assert model.config.tie_word_embeddings is False
    after = _logits(model, ids)
    assert torch.allclose(before, after, atol=1e-4 * float(before.abs().max()))
    for name, param in model.named_parameters():
        if name.endswith("norm.weight"):
            assert torch.equal(param, torch.ones_like(param))  # folded into the Linears


def test_rotation_spreads_an_outlier_channel():
    model = _llama(tied=False)
    model.model.embed_tokens.weight.data[:, 5] *= 40.0  # one residual channel with outliers
    embed = model.model.embed_tokens.weight

    def peak_over_rms(w):
        return float((w.abs().amax(1) / w.pow(2).mean(1).sqrt()).median())

    before = peak_over_rms(embed.detach())
    rotate_(model)
    assert peak_over_rms(model.model.embed_tokens.weight.detach()) < before / 2


def test_a_zoo_decoder_rotates_and_a_non_llama_model_is_refused_untouched():
    entry = zoo.get("tiny-llama")
    model = entry.load().eval()
    inputs = tuple(entry.example_inputs(2))
    before = _logits(model, inputs)
    rotate_(model)
    assert torch.allclose(before, _logits(model, inputs), atol=1e-4 * float(before.abs().max()))
    bert = zoo.get("tiny-bert").load()
    state = copy.deepcopy(bert.state_dict())
    with pytest.raises(BlockWalkError):
        rotate_(bert)
    assert all(torch.equal(v, bert.state_dict()[k]) for k, v in state.items())


def test_bad_options_are_one_clear_error():
    with pytest.raises(ConfigError, match="seed"):
        RotateConfig(seed=-1)
    with pytest.raises(ConfigError, match="heads"):
        RotateConfig(heads="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"(?i)unknown|did you mean"):
        RotateConfig.from_dict({"sead": 1})


def test_a_rotated_tied_model_reloads_after_its_head_is_untied_again():
    from torchslim.pipeline.steps.transforms import RotateOptions, restore_rotation

    rotated = _llama(tied=True)
    record = {"untied_head": rotate_(rotated)["untied_head"]}
    fresh = _llama(tied=True)
    restore_rotation(fresh, RotateOptions(), record, context=None)  # type: ignore[arg-type]
    fresh.load_state_dict(rotated.state_dict(), strict=True)
    ids = (torch.randint(0, 96, (1, 7)),)
    assert torch.equal(_logits(fresh, ids), _logits(rotated, ids))


def test_the_rotate_recipe_compresses_a_decoder_and_its_artifact_reloads(tmp_path):
    import torchslim
    from torchslim.pipeline import load_recipe
    from torchslim.pipeline.runner import RunOptions, compress

    entry = zoo.get("tiny-llama")
    options = RunOptions(repeats=3, measure_stages=False)
    outcome = compress(entry, load_recipe("llm-rotate-gptq-int4"), tmp_path / "r", options)
    assert outcome.details["stages"][0]["summary"]["blocks"] == 2
    assert 0.9 < outcome.after.metrics["cosine_vs_reference"] < 1.0
    reloaded = torchslim.load(tmp_path / "r").eval()
    inputs = tuple(entry.example_inputs(2))
    reference = _logits(entry.load().eval(), inputs)
    cosine = torch.nn.functional.cosine_similarity(
        _logits(reloaded, inputs).flatten(), reference.flatten(), dim=0
    )
    assert float(cosine) > 0.9

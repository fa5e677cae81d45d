import pytest
import torch

from torchslim import zoo
from torchslim.zoo import tiny

OUTPUT_SHAPES = {  # per sample, the batch dimension left out
    "tiny-bert": (tiny.SEQ_LEN, 32),
    "tiny-llama": (tiny.SEQ_LEN, tiny.VOCAB_SIZE),
    "tiny-gpt2": (tiny.SEQ_LEN, tiny.VOCAB_SIZE),
    "tiny-vit": (10,),
    "tiny-resnet": (10,),
    "tiny-mobilenetv2": (10,),
    "tiny-cnn": (10,),
    "tiny-resnet8": (10,),
    "tiny-resnet14": (10,),
}


def test_every_tiny_entry_is_registered_with_a_tiny_task():
    registered = {name: zoo.get(name) for name in zoo.names() if name.startswith("tiny-")}
    assert set(registered) == set(OUTPUT_SHAPES)
    assert {entry.task for entry in registered.values()} == {
        "tiny-text-encoder", "tiny-causal-lm", "tiny-image-classifier"
    }  # fmt: skip
    assert all(entry.card for entry in registered.values())


@pytest.mark.parametrize("name", sorted(OUTPUT_SHAPES))
def test_tiny_entry_is_deterministic_finite_and_its_own_reference(name):
    entry = zoo.get(name)
    rng_before = torch.random.get_rng_state()
    first, second = entry.load(), entry.load()
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # seeding is private
    assert not first.training
    for (key, a), (_, b) in zip(
        first.state_dict().items(), second.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), key
    batch = entry.example_inputs(3)
    assert all(torch.equal(x, y) for x, y in zip(batch, entry.example_inputs(3), strict=True))
    with torch.inference_mode():
        output = first(*batch)
    assert isinstance(output, torch.Tensor)
    assert output.shape == (3, *OUTPUT_SHAPES[name])
    assert torch.isfinite(output).all() and output.abs().max() > 1e-6
    metrics = entry.evaluate(first)
    assert metrics["cosine_vs_reference"] == pytest.approx(1.0, abs=1e-6)
    # the reference is cached once per process: a thread count changed by an earlier test may
    # pick another conv kernel, which may differ in the last bit
    assert metrics["max_abs_diff_vs_reference"] <= 1e-5
    assert set(metrics) == set(entry.metric_names())


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-mobilenetv2"])
def test_calibration_batches_are_seeded_and_disjoint_from_eval_inputs(name):
    entry = zoo.get(name)
    calibration = entry.calibration_batches(2, batch_size=4)
    again = entry.calibration_batches(2, batch_size=4)
    (eval_inputs,) = entry.example_inputs(4)
    assert len(calibration) == 2 and calibration[0][0].shape == eval_inputs.shape
    assert torch.equal(calibration[1][0], again[1][0])
    assert not torch.equal(calibration[0][0], calibration[1][0])
    assert not torch.equal(calibration[0][0], eval_inputs)


def test_batchnorm_layers_get_nontrivial_statistics():
    model = zoo.get("tiny-resnet8").load()
    norm = model.bn1
    assert not torch.allclose(norm.running_var, torch.ones_like(norm.running_var))
    assert not torch.allclose(norm.weight, torch.ones_like(norm.weight))


def test_evaluate_measures_how_far_a_modified_model_moved():
    entry = zoo.get("tiny-gpt2")
    model = entry.load()
    with torch.no_grad():
        weight = model.model.transformer.h[0].mlp.c_fc.weight
        weight.add_(torch.randn(weight.shape, generator=torch.Generator().manual_seed(1)) * 0.5)
    metrics = entry.evaluate(model)
    assert 0.0 < metrics["cosine_vs_reference"] < 0.9999
    assert metrics["max_abs_diff_vs_reference"] > 1e-3


def test_evaluate_feeds_a_bfloat16_model_bfloat16_inputs():
    entry = zoo.get("tiny-cnn")
    metrics = entry.evaluate(entry.load().to(torch.bfloat16))
    assert 0.99 < metrics["cosine_vs_reference"] < 1.0
    assert metrics["max_abs_diff_vs_reference"] > 0.0

"""Every technique is a registered step: each runs in a recipe, does what it claims against a
plain quantize, refuses a model it does not fit or a wrong place in the recipe, and its artifact
reloads."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchslim
from torchslim import zoo
from torchslim.errors import ConfigError
from torchslim.pipeline import RecipeError, load_recipe, parse_recipe
from torchslim.pipeline.runner import RunOptions, compress
from torchslim.zoo.tiny import TinyEntry

FAST = RunOptions(repeats=3, measure_stages=False)
COSINE = "cosine_vs_reference"
W8A8 = "  - step: quantize\n    scheme: w8a8\n    observer: minmax\n    calibration_batches: 2\n"
PER_TENSOR = W8A8 + "    weight: int8-tensor\n"


def recipe(*stages: str) -> str:
    return "version: 1\nstages:\n" + "".join(stages)


def run(entry, text: str, path):  # type: ignore[no-untyped-def]
    return compress(entry, parse_recipe(text), path, FAST)


def summaries(outcome) -> list[dict]:  # type: ignore[no-untyped-def]
    return [stage["summary"] for stage in outcome.details["stages"]]


def reloaded(entry, path, outcome) -> None:  # type: ignore[no-untyped-def]
    """The artifact reloads (every stage's structure replayed, the weights load strictly) with
    the quantized weights; its activations run in float, so it is at least as close to fp32."""
    model = torchslim.load(path)
    cosine = entry.evaluate(model)[COSINE]
    assert outcome.after.metrics[COSINE] - 1e-6 <= cosine < 1.0 - 1e-9  # weights quantized


def _with_outliers(entry_name: str, factor: float = 30.0) -> TinyEntry:
    """tiny-llama with a few activation channels ``factor`` times larger: each norm's weight
    grows there and the Linears it feeds shrink those input columns, so the function is the
    same but a per-tensor int8 activation grid spends its levels on four channels."""
    base = zoo.get(entry_name)
    assert isinstance(base, TinyEntry)

    def build() -> nn.Module:
        model = base.build()
        with torch.no_grad():
            for layer in model.model.model.layers:
                for norm, linears in (
                    (layer.input_layernorm, ("q_proj", "k_proj", "v_proj")),
                    (layer.post_attention_layernorm, ("gate_proj", "up_proj")),
                ):
                    norm.weight[:4] *= factor
                    parent = layer.self_attn if linears[0] == "q_proj" else layer.mlp
                    for name in linears:
                        getattr(parent, name).weight[:, :4] /= factor
        return model

    return TinyEntry(f"{entry_name}-outliers", base.task, "outlier channels", build, base.inputs)


# --- order and fit -------------------------------------------------------------------------------

ORDER = [
    (recipe("  - step: gptq\n"), r"<recipe>:3: step 'gptq' works on fake-quant layers.*quantize"),
    (recipe("  - step: bias_correction\n", W8A8), r":3: step 'bias_correction' works on fake"),
    (recipe(W8A8, "  - step: smoothquant\n"), r":7: step 'smoothquant' .*before the 'quantize'"),
    (recipe(W8A8, "  - step: equalize\n"), r"must come before the 'quantize' stage \(line 3\)"),
]


@pytest.mark.parametrize(("text", "expected"), ORDER)
def test_a_step_in_the_wrong_place_is_refused_with_its_line(text, expected):
    with pytest.raises(RecipeError, match=expected):
        parse_recipe(text)


def test_options_are_checked_when_the_recipe_is_read():
    bad = [
        ("  - step: gptq\n    damp: 2\n", r"damp=2"),
        ("  - step: adaround\n    warmup: 1.5\n", r"warmup"),
        ("  - step: bias_correction\n    layers: depthwize\n", r'Did you mean "depthwise"'),
        ("  - step: awq\n    calibration_batches: 0\n", r"calibration_batches"),
    ]
    for stage, expected in bad:
        with pytest.raises(RecipeError, match=expected):
            parse_recipe(recipe(W8A8, stage))
    with pytest.raises(RecipeError, match="exactly one of size_budget_ratio"):
        parse_recipe(recipe("  - step: mixed_precision\n"))
    with pytest.raises(RecipeError, match=r":4: .*smoothquant.*alpha"):
        parse_recipe(recipe("  - step: smoothquant\n    alpha: 3\n", W8A8))
    after_qat = parse_recipe(recipe("  - step: qat\n    weight: int4\n  - step: gptq\n"))
    assert [s.step for s in after_qat.stages] == ["qat", "gptq"]  # qat quantizes too


def test_smoothquant_on_a_cnn_says_why_not(tmp_path):
    text = recipe("  - step: smoothquant\n", W8A8)
    with pytest.raises(ConfigError, match=r"SmoothQuant needs LLaMA.*BERT.*tiny-cnn has none"):
        run(zoo.get("tiny-cnn"), text, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_gptq_on_a_model_without_int_weights_is_refused(tmp_path):
    text = recipe("  - step: quantize\n    weight: fp8-e4m3\n", "  - step: gptq\n")
    with pytest.raises(ConfigError, match="gptq found no fake-quant Linear with an int weight"):
        run(zoo.get("tiny-llama"), text, tmp_path / "x")


def test_equalize_without_folding_finds_nothing_and_says_why(tmp_path):
    text = recipe("  - step: equalize\n    fold_batchnorm: false\n", W8A8)
    with pytest.raises(ConfigError, match=r"no layer pair.*set fold_batchnorm: true"):
        run(zoo.get("tiny-resnet8"), text, tmp_path / "x")  # a BatchNorm after every conv
    assert not (tmp_path / "x").exists()


# --- LLM steps ------------------------------------------------------------------------------------

INT4 = (
    "  - step: quantize\n    weight: uint4-g64\n    observer: minmax\n    calibration_batches: 2\n"
)


def test_gptq_and_awq_lower_each_layers_error_and_keep_the_output(tmp_path):
    entry = zoo.get("tiny-llama")
    plain = run(entry, recipe(INT4), tmp_path / "rtn").after.metrics[COSINE]
    steps = (
        "  - step: awq\n    calibration_batches: 2\n  - step: gptq\n    calibration_batches: 2\n"
    )
    outcome = run(entry, recipe(INT4, steps), tmp_path / "q")
    awq, gptq = summaries(outcome)[1:]
    assert awq["groups_awq"] == 6 and awq["loss_ratio_vs_rtn_median"] < 1.0  # 3 per block
    assert gptq["layers_gptq"] == 15 and gptq["loss_ratio_vs_rtn_median"] < 0.8  # 7 a block, head
    assert outcome.after.metrics[COSINE] > plain - 0.01
    assert outcome.after.size_bytes < 0.5 * outcome.before.size_bytes  # packed int4 codes


def test_smoothquant_tames_activation_outliers_before_w8a8(tmp_path):
    entry = _with_outliers("tiny-llama")
    plain = run(entry, recipe(W8A8), tmp_path / "plain").after.metrics[COSINE]
    smooth = "  - step: smoothquant\n    calibration_batches: 2\n"
    alone = run(entry, recipe(smooth), tmp_path / "alone")
    assert alone.after.metrics[COSINE] > 0.99999  # the float function is unchanged
    outcome = run(entry, recipe(smooth, W8A8), tmp_path / "sq")
    summary = summaries(outcome)[0]
    assert summary["groups_smoothed"] == 4 and summary["modes"] == {"fold": 4}
    assert summary["outlier_ratio_after_max"] < summary["outlier_ratio_before_max"] / 3
    assert 1 - outcome.after.metrics[COSINE] < 0.5 * (1 - plain)  # at least half the error gone


def test_smoothquant_on_bert_wraps_linears_and_the_artifact_reloads(tmp_path):
    entry = zoo.get("tiny-bert")
    text = recipe("  - step: smoothquant\n    calibration_batches: 2\n", W8A8)
    outcome = run(entry, text, tmp_path / "b")
    record = outcome.details["stages"][0]["record"]
    assert len(record["input_scaled"]) == 8  # query/key/value + intermediate, two layers
    reloaded(entry, tmp_path / "b", outcome)  # the input scaling is put back, weights load


# --- CNN steps ------------------------------------------------------------------------------------


class _Imbalanced(TinyEntry):
    """tiny-cnn whose first BatchNorm makes two channels ``factor`` times wider (the next conv
    reads them ``factor`` times smaller: the same function), as real BN-folded CNNs often are.
    Set after ``load`` builds the model (which sets every BatchNorm's parameters)."""

    factor = 20.0

    def load(self) -> nn.Module:
        model = super().load()
        with torch.no_grad():
            bn, conv = model.features[0][1], model.features[1][0]
            bn.weight[:2] *= self.factor
            bn.bias[:2] *= self.factor
            conv.weight[:, :2] /= self.factor
        return model


def _imbalanced() -> TinyEntry:
    base = zoo.get("tiny-cnn")
    assert isinstance(base, TinyEntry)
    return _Imbalanced("tiny-cnn-imbalanced", base.task, "imbalanced", base.build, base.inputs)


def _channel_spread(conv: nn.Module) -> float:
    """Widest over narrowest output channel's weight range of a conv."""
    ranges = conv.weight.detach().abs().flatten(1).amax(1)  # (C_out,)
    return float(ranges.max() / ranges.min())


def test_equalize_keeps_the_function_and_balances_channel_ranges(tmp_path):
    from torchslim._io import load_tensors
    from torchslim.pipeline.steps.transforms import restore_folding
    from torchslim.quantize.fold import fold_batchnorm_

    entry = _imbalanced()
    alone = run(entry, recipe("  - step: equalize\n"), tmp_path / "alone")
    assert alone.after.metrics[COSINE] > 0.99999  # BN folding and CLE keep the function
    summary = summaries(alone)[0]
    assert summary["batchnorm_folded"] == 4 and summary["pairs_equalized"] == 5
    folded = entry.load()
    fold_batchnorm_(folded)
    equalized = entry.load()  # the artifact's weights fit the folded structure (BN, biases)
    restore_folding(equalized, None, alone.details["stages"][0]["record"], None)
    equalized.load_state_dict(load_tensors(tmp_path / "alone" / "model.safetensors"))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in equalized.modules())
    first = "features.0.0"
    spread = _channel_spread(equalized.get_submodule(first))
    assert spread < 0.25 * _channel_spread(folded.get_submodule(first))  # the 20x channels tamed
    plain = run(entry, recipe(PER_TENSOR), tmp_path / "plain").after.metrics[COSINE]
    outcome = run(entry, recipe("  - step: equalize\n", PER_TENSOR), tmp_path / "eq")
    assert 1 - outcome.after.metrics[COSINE] < 0.25 * (1 - plain)  # per-tensor int8 recovers


def test_bias_correction_and_adaround_improve_on_plain_w8a8(tmp_path):
    entry = zoo.get("tiny-resnet")
    plain = run(entry, recipe(W8A8), tmp_path / "plain").after.metrics[COSINE]
    bias = run(entry, recipe(W8A8, "  - step: bias_correction\n    calibration_batches: 2\n"),
               tmp_path / "bias")  # fmt: skip
    corrected = summaries(bias)[1]
    assert corrected["layers_corrected"] > 0 and corrected["largest_correction"] > 0
    assert bias.after.metrics[COSINE] > plain - 1e-4
    assert bias.details["stages"][1]["record"]["biases_added"]  # HF ResNet convs had none
    reloaded(entry, tmp_path / "bias", bias)
    ada = "  - step: adaround\n    iterations: 100\n    calibration_batches: 2\n"
    rounded = run(entry, recipe(W8A8, ada), tmp_path / "ada")
    summary = summaries(rounded)[1]
    assert summary["layers_adaround"] == 8 and summary["mse_ratio_vs_nearest_median"] < 1.0
    assert 0 < summary["changed_fraction_mean"] < 0.5
    assert rounded.after.metrics[COSINE] > plain - 1e-4


def test_mixed_precision_fits_the_budget_and_spends_bits_where_they_matter(tmp_path):
    entry = zoo.get("tiny-resnet")
    mixed = "  - step: mixed_precision\n    size_budget_ratio: 0.2\n    calibration_batches: 2\n"
    outcome = run(entry, recipe(mixed), tmp_path / "mp")
    summary = summaries(outcome)[0]
    assert summary["planned_size_bytes"] <= summary["size_budget_bytes"]
    assert set(summary["layers_per_format"]) == {"int8", "int4"}  # a real mix
    weight = (
        "  - step: quantize\n    weight: {}\n    observer: minmax\n    calibration_batches: 1\n"
    )
    int4 = run(entry, recipe(weight.format("int4")), tmp_path / "int4")
    int8 = run(entry, recipe(weight.format("int8")), tmp_path / "int8")
    assert int4.after.size_bytes < outcome.after.size_bytes < int8.after.size_bytes
    assert outcome.after.metrics[COSINE] > int4.after.metrics[COSINE]


def test_mixed_precision_below_the_smallest_plan_is_refused(tmp_path):
    text = recipe("  - step: mixed_precision\n    size_budget_bytes: 1000\n")
    with pytest.raises(ConfigError, match="below the smallest plan"):
        run(zoo.get("tiny-cnn"), text, tmp_path / "x")


def test_the_accurate_ptq_recipe_runs_and_reloads(tmp_path):
    entry = zoo.get("tiny-cnn")
    text = load_recipe("cnn-ptq-accurate").to_yaml().replace("iterations: 500", "iterations: 50")
    outcome = compress(entry, parse_recipe(text), tmp_path / "a", FAST)
    assert [s["step"] for s in outcome.details["stages"]] == [
        "equalize", "quantize", "bias_correction", "adaround"
    ]  # fmt: skip
    assert outcome.after.metrics[COSINE] > 0.99
    reloaded(entry, tmp_path / "a", outcome)


@pytest.mark.assets
@pytest.mark.slow  # three evaluations of the 10 000 test images (before, before training, after)
def test_qat_trains_the_quantized_model_on_the_training_split(tmp_path):
    entry = zoo.get("fashion-cnn")
    text = recipe("  - step: qat\n    scheme: w4a8\n    observer: minmax\n    samples: 1024\n"
                  "    batch_size: 64\n    calibration_batches: 2\n")  # fmt: skip
    outcome = run(entry, text, tmp_path / "qat")
    summary = summaries(outcome)[0]
    assert summary["training_samples"] == 1024 and summary["steps"] == 16
    before = summary["metrics_before_training"]["accuracy"]
    assert outcome.after.metrics["accuracy"] >= before - 0.005  # training did not hurt
    assert outcome.after.metrics["accuracy"] > outcome.before.metrics["accuracy"] - 0.03
    assert outcome.after.size_bytes < 0.3 * outcome.before.size_bytes  # int4 codes


def test_qat_on_an_entry_without_training_data_is_refused(tmp_path):
    text = recipe("  - step: qat\n    weight: int4\n")
    with pytest.raises(ConfigError, match="no training split"):
        run(zoo.get("tiny-cnn"), text, tmp_path / "x")

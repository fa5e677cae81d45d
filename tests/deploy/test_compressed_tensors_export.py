"""compressed-tensors export: the model transformers loads computes with torchslim's weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from torchslim import QuantConfig, quantize_, zoo
from torchslim.deploy.compressed_tensors_export import export_compressed_tensors, signed_codes
from torchslim.errors import ConfigError
from torchslim.quantize.modules import QuantLinear, quant_modules
from torchslim.quantize.primitives import dequantize, to_groups

pytest.importorskip("compressed_tensors")
torch.set_num_threads(1)

LM_HEAD = ("re:.*lm_head",)


def quantized_llama(weight: str, overrides: tuple = ()) -> nn.Module:
    model = zoo.get("tiny-llama").load()
    quantize_(model, QuantConfig(weight=weight, observer="minmax", ignore=LM_HEAD,
                                 overrides=overrides))  # fmt: skip
    return model


def transformers_logits(directory: Path, ids: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(str(directory)).eval()
    with torch.no_grad():
        return loaded(input_ids=ids, attention_mask=torch.ones_like(ids)).logits  # (B, T, V)


@pytest.mark.parametrize(
    "weight, overrides, groups",
    [
        ("uint4-g64", (), 1),
        ("int8", (), 1),
        ("int4-g32", (("re:.*mlp.*", "int8"),), 2),  # mixed formats: one group each
    ],
)
def test_transformers_loads_the_export_with_torchslims_logits(
    tmp_path: Path, weight: str, overrides: tuple, groups: int
) -> None:
    model = quantized_llama(weight, overrides)
    ids = zoo.get("tiny-llama").example_inputs(2)[0]  # (2, 16)
    with torch.no_grad():
        expected = model(ids)  # (2, 16, V) torchslim's fake-quant model
    export = export_compressed_tensors(model, tmp_path / "ct")
    config = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "compressed-tensors" and config["format"] == "pack-quantized"
    assert len(config["config_groups"]) == groups and config["ignore"] == ["lm_head"]
    assert config["dequantize"] == weight.startswith("uint")  # asymmetric zero points
    assert len(export.layers) == 14  # 7 Linear layers x 2 decoder layers
    torch.testing.assert_close(transformers_logits(export.directory, ids), expected,
                               rtol=1e-5, atol=1e-5)  # fmt: skip


def test_the_packed_codes_are_exactly_torchslims(tmp_path: Path) -> None:
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32
    from safetensors.torch import load_file

    model = quantized_llama("uint4-g64")
    export_compressed_tensors(model, tmp_path / "ct")
    stored = load_file(str(tmp_path / "ct" / "model.safetensors"))
    for name, module in quant_modules(model).items():
        assert isinstance(module, QuantLinear)
        key = name.removeprefix("model.")  # the zoo wrapper's prefix
        shape = tuple(stored[f"{key}.weight_shape"].tolist())
        assert shape == tuple(module.weight.shape) and f"{key}.weight" not in stored
        codes = unpack_from_int32(stored[f"{key}.weight_packed"], 4, torch.Size(shape))
        scale = stored[f"{key}.weight_scale"]  # (out, G)
        zero = unpack_from_int32(stored[f"{key}.weight_zero_point"], 4,
                                 torch.Size(scale.shape), packed_dim=0)  # fmt: skip
        expected_codes, expected_scale, expected_zero = signed_codes(module)
        assert torch.equal(codes, expected_codes) and torch.equal(zero, expected_zero)
        assert torch.equal(scale, expected_scale)
        # the codes are the grid points of torchslim's own quantized weight
        values = dequantize(to_groups(codes.float(), 64), scale[..., None], zero[..., None])
        torch.testing.assert_close(values.reshape(shape), module.quantized_weight())


@pytest.mark.parametrize(
    "config, message",
    [
        (QuantConfig(weight="kmeans-16", observer="minmax", ignore=LM_HEAD), "kmeans-16"),
        (QuantConfig(weight="fp8-e4m3", observer="minmax", ignore=LM_HEAD), "fp8-e4m3"),
        (
            QuantConfig(
                weight="int8", activation="uint8", dynamic=True, observer="minmax", ignore=LM_HEAD
            ),
            "weight-only",
        ),
    ],
)
def test_a_refused_model_writes_nothing_and_is_left_as_it_was(
    tmp_path: Path, config: QuantConfig, message: str
) -> None:
    model = zoo.get("tiny-llama").load()
    quantize_(model, config)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match=message) as error:
        export_compressed_tensors(model, tmp_path / "ct")
    assert "int8, uint8, int4-g128" in str(error.value) or message == "weight-only"
    assert not (tmp_path / "ct").exists() and list(tmp_path.iterdir()) == []
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_asymmetric_formats_in_several_groups_are_refused_before_writing(tmp_path: Path) -> None:
    model = quantized_llama("uint4-g32", (("re:.*mlp.*", "int8"),))
    with pytest.raises(ConfigError, match="one format"):
        export_compressed_tensors(model, tmp_path / "ct")
    assert list(tmp_path.iterdir()) == []


def test_an_unquantized_model_is_refused() -> None:
    with pytest.raises(ConfigError, match="quantize it first"):
        export_compressed_tensors(zoo.get("tiny-llama").load(), Path("never-written"))
    assert not Path("never-written").exists()


def test_the_step_measures_what_transformers_loads_and_writes_a_hf_directory(
    tmp_path: Path,
) -> None:
    from transformers import AutoModelForCausalLM

    from torchslim.pipeline import parse_recipe
    from torchslim.pipeline.runner import RunOptions, compress

    recipe = parse_recipe(
        "version: 1\nstages:\n  - step: quantize\n    weight: uint4-g64\n    observer: minmax\n"
        "    ignore: ['re:.*lm_head']\n  - step: compressed_tensors\n"
    )
    entry = zoo.get("tiny-llama")
    outcome = compress(entry, recipe, tmp_path / "out", RunOptions(repeats=2))
    stages = outcome.details["stages"]
    quantized, exported = stages[0]["figures"]["metrics"], stages[1]["figures"]["metrics"]
    assert exported == pytest.approx(quantized, rel=1e-6, abs=1e-6)  # the same model, reloaded
    assert stages[1]["summary"]["formats"] == ["uint4-g64"]
    weights = tmp_path / "out" / "model.safetensors"
    assert outcome.after.size_bytes == weights.stat().st_size
    assert outcome.after.size_bytes < 0.75 * outcome.before.size_bytes  # fp32 embedding, head
    loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"))
    assert type(loaded).__name__ == "LlamaForCausalLM"
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["backend"] == "transformers" and manifest["format"] == "compressed-tensors"

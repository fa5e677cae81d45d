"""Packed storage: every weight format round-trips to the same outputs; low bits really shrink."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from models import tiny_convnet, tiny_images
from torchslim import QuantConfig, quantize_
from torchslim.errors import ModelLoadError
from torchslim.quantize import load_quantized, quantized_state_dict, save_quantized

torch.set_num_threads(1)


def wide_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 256)).eval()


@pytest.mark.parametrize(
    "weight",
    ["int8", "int4", "uint4", "int3", "int4-g3", "fp8-e4m3", "bf16", "binary", "binary-g3",
     "ternary", "pow2-4", "kmeans-4"],
)  # fmt: skip
def test_round_trip_gives_identical_outputs(weight: str, tmp_path: Path) -> None:
    images = tiny_images(32)[0]
    model = tiny_convnet().eval()
    config = QuantConfig(weight=weight, activation="uint8", overrides={"5": "int4-g4"})
    quantize_(model, config, [images])
    path = save_quantized(model, tmp_path / "q.safetensors")
    loaded = load_quantized(tiny_convnet(seed=7).eval(), path)  # other random weights
    assert torch.equal(model(images), loaded(images))


@pytest.mark.parametrize(("weight", "min_ratio"), [("int8", 3.8), ("int4", 7.5), ("binary", 25)])
def test_packed_file_is_smaller_by_the_bit_width(
    weight: str, min_ratio: float, tmp_path: Path
) -> None:
    model = wide_mlp()
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "f.safetensors"
    )
    quantize_(model, QuantConfig(weight=weight))
    save_quantized(model, tmp_path / "q.safetensors")
    ratio = (tmp_path / "f.safetensors").stat().st_size / (
        tmp_path / "q.safetensors"
    ).stat().st_size
    assert ratio > min_ratio
    tensors, metadata = quantized_state_dict(model)
    assert "0.weight" not in tensors and tensors["0.weight.packed"].dtype == torch.uint8
    assert metadata["layers"]["0"]["weight_format"] == weight


def test_int4_is_two_codes_per_byte() -> None:
    model = wide_mlp()
    quantize_(model, QuantConfig(weight="int4"))
    tensors, _ = quantized_state_dict(model)
    assert tensors["0.weight.packed"].numel() == 256 * 512 // 2


def test_load_refuses_plain_and_mismatched_files(tmp_path: Path) -> None:
    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(2)}, plain)
    with pytest.raises(ModelLoadError, match="metadata"):
        load_quantized(wide_mlp(), plain)
    model = wide_mlp()
    quantize_(model, QuantConfig(weight="int4"))
    path = save_quantized(model, tmp_path / "q.safetensors")
    with pytest.raises(ModelLoadError):
        load_quantized(tiny_convnet(), path)


def test_round_trip_after_batchnorm_folding(tmp_path: Path) -> None:
    from torchslim.quantize import fold_batchnorm_

    images = tiny_images(32)[0]
    model = tiny_convnet().eval()
    fold_batchnorm_(model)
    quantize_(model, QuantConfig(weight="int4", activation="uint8"), [images])
    path = save_quantized(model, tmp_path / "folded.safetensors")
    loaded = load_quantized(tiny_convnet(seed=3).eval(), path)  # a fresh model, BN unfolded
    assert isinstance(loaded[1], nn.Identity)
    assert torch.equal(model(images), loaded(images))

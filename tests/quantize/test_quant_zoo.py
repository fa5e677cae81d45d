"""quantize_ on a real zoo model: mnist-cnn on the 5 000 OpenCV digits (fp32: 97.00 %)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from torchslim import QuantConfig, quantize_, zoo
from torchslim._io import save_tensors
from torchslim.quantize import load_quantized, save_quantized

torch.set_num_threads(1)


@pytest.mark.assets
def test_mnist_cnn_w8a8_and_packed_w4(tmp_path: Path) -> None:
    entry = zoo.get("mnist-cnn")
    model = entry.load()
    quantize_(model, QuantConfig(weight="int8", activation="uint8"), entry.calibration_batches(8))
    assert entry.evaluate(model)["accuracy"] >= 0.967  # drop <= 0.3 pt
    w4 = entry.load()
    quantize_(w4, QuantConfig(weight="int4"))
    save_tensors(tmp_path / "fp32.safetensors", entry.load().state_dict())
    path = save_quantized(w4, tmp_path / "w4.safetensors")
    assert (tmp_path / "fp32.safetensors").stat().st_size / path.stat().st_size > 7
    x = entry.example_inputs(64)[0]
    assert torch.equal(load_quantized(entry.build(), path)(x), w4(x))

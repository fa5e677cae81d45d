"""QAT: LSQ scales get gradients, the trainer fine-tunes a fake-quant model, and it resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models import tiny_convnet, tiny_images
from torchslim import QuantConfig
from torchslim.errors import TorchslimError
from torchslim.quantize import QuantFormat
from torchslim.quantize.lsq import lsq_fake_quantize
from torchslim.quantize.qat import prepare_qat_, train_qat
from torchslim.train import TrainConfig

torch.set_num_threads(1)


def test_lsq_scale_gets_the_paper_gradient() -> None:
    fmt = QuantFormat.parse("int4-tensor")
    x = torch.tensor([0.26, -0.9, 5.0])  # inside, inside, clipped at qmax = 7
    scale = torch.tensor(0.2, requires_grad=True)
    out = lsq_fake_quantize(x, fmt, scale, torch.tensor(0))
    assert torch.allclose(out, torch.tensor([0.2, -0.8, 1.4]))
    out.sum().backward()
    # d out / d s: round(x/s) - x/s inside, qmax when clipped; times g = 1 / sqrt(3 * 7)
    expected = ((1 - 1.3) + (-4 + 4.5) + 7) / (3 * 7) ** 0.5
    assert scale.grad is not None and abs(float(scale.grad) - expected) < 1e-5


def test_lsq_group_scales_each_get_gradients() -> None:
    fmt = QuantFormat.parse("int4-g8")
    weight = torch.randn(4, 16, requires_grad=True)
    scale = (weight.detach().abs().reshape(4, 2, 8).amax(-1, keepdim=True) / 7).requires_grad_()
    lsq_fake_quantize(weight, fmt, scale, torch.zeros_like(scale, dtype=torch.int32)).pow(
        2
    ).sum().backward()
    assert scale.grad is not None and bool((scale.grad != 0).all())
    assert weight.grad is not None and weight.grad.abs().sum() > 0


def test_prepared_model_scales_learn(tmp_path: Path) -> None:
    images, labels = tiny_images(128)
    model = tiny_convnet()
    config = QuantConfig(weight="int4", activation="uint4")
    prepare_qat_(model, config, [images[:64]])
    conv = model[0]
    assert conv.weight_quantizer.scale.requires_grad and conv.input_quantizer.scale.requires_grad
    model.train()
    torch.nn.functional.cross_entropy(model(images), labels).backward()
    assert conv.weight_quantizer.scale.grad is not None
    assert conv.input_quantizer.scale.grad is not None and conv.input_quantizer.scale.grad.abs() > 0
    before = conv.weight_quantizer.scale.detach().clone()
    train_config = TrainConfig(epochs=2, batch_size=32, lr=0.05, augment=False, amp="off")
    train_qat(model, train_config, (images, labels), tmp_path)
    assert not torch.equal(before, conv.weight_quantizer.scale.detach())
    assert not model.training
    assert json.loads((tmp_path / "checkpoint" / "position.json").read_text())["epoch"] == 2


def test_qat_resumes_to_the_same_weights(tmp_path: Path) -> None:
    images, labels = tiny_images(128)
    config = QuantConfig(weight="int4", activation="uint8")
    train_config = TrainConfig(
        epochs=2, batch_size=32, lr=0.05, augment=False, amp="off", checkpoint_every_steps=2
    )

    def prepared() -> torch.nn.Module:
        model = tiny_convnet()
        prepare_qat_(model, config, [images[:64]])
        return model

    full = prepared()
    train_qat(full, train_config, (images, labels), tmp_path / "full")
    steps = 0

    def crashing_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        nonlocal steps
        steps += 1
        if steps == 6:  # killed in epoch 2, after the checkpoint at step 4
            raise KeyboardInterrupt
        return torch.nn.functional.cross_entropy(model(x), y)

    with pytest.raises(KeyboardInterrupt):
        train_qat(
            prepared(), train_config, (images, labels), tmp_path / "killed", loss_fn=crashing_loss
        )
    position = json.loads((tmp_path / "killed" / "checkpoint" / "position.json").read_text())
    assert position["global_step"] == 4
    resumed = prepared()  # a new process prepares the model again, then resumes
    train_qat(resumed, train_config, (images, labels), tmp_path / "killed", resume=True)
    for key, value in full.state_dict().items():
        assert torch.allclose(value.float(), resumed.state_dict()[key].float(), atol=1e-6), key


def test_lsq_refuses_non_int_formats() -> None:
    model = tiny_convnet()
    prepare_qat_(model, QuantConfig(weight="binary"), learn_scales=False)
    with pytest.raises(TorchslimError, match="LSQ"):
        model[0].weight_quantizer.enable_lsq()

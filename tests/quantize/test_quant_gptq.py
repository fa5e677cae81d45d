"""GPTQ: lower output error than round-to-nearest on correlated inputs; codes stay on the grid."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from torchslim import QuantConfig, quantize_
from torchslim.errors import ConfigError
from torchslim.quantize import CalibrationError, load_quantized, save_quantized, sqnr_db
from torchslim.quantize.gptq import GPTQConfig, gptq_

torch.set_num_threads(1)


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 48), nn.GELU(), nn.Linear(48, 16)).eval()


def correlated_inputs(n: int = 512, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    latent = torch.randn(n, 6, generator=generator)  # (n, 6)
    mixing = torch.randn(6, 64, generator=generator)  # (6, 64)
    return latent @ mixing + 0.05 * torch.randn(n, 64, generator=generator)  # (n, 64)


@pytest.mark.parametrize("weight", ["int4", "int3-g16", "uint4-g16"])
def test_gptq_beats_round_to_nearest(weight: str, tmp_path: Path) -> None:
    x = correlated_inputs()
    reference = mlp()(x)
    nearest, model = mlp(), mlp()
    config = QuantConfig(weight=weight, observer="minmax")
    quantize_(nearest, config)
    quantize_(model, config)
    report = gptq_(model, [x[:256], x[256:]])
    for layer in report.values():
        assert layer["loss_gptq"] < 0.7 * layer["loss_nearest"]
    assert sqnr_db(reference, model(x)) > sqnr_db(reference, nearest(x)) + 2
    for module in (model[0], model[2]):  # latent weights on the grid: fake-quant is identity
        assert torch.allclose(module.quantized_weight(), module.weight.detach(), atol=1e-6)
    path = save_quantized(model, tmp_path / "gptq.safetensors")
    assert torch.equal(load_quantized(mlp(5), path)(x), model(x))


def test_gptq_refuses_bad_data_and_leaves_model_untouched() -> None:
    model = mlp()
    quantize_(model, QuantConfig(weight="int4"))
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(CalibrationError, match="batch 0"):
        gptq_(model, [torch.full((4, 64), float("nan"))])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_gptq_config_validates() -> None:
    with pytest.raises(ConfigError, match="damp"):
        GPTQConfig(damp=0.0)
    with pytest.raises(ConfigError, match="Did you mean"):
        GPTQConfig.from_dict({"dampening": 0.1})


class TiedLM(nn.Module):
    """An embedding and an LM head sharing one weight."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(32, 16)
        self.body = nn.Linear(16, 16)
        self.head = nn.Linear(16, 32, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(self.embed(ids))))


def test_tied_weights_are_not_rewritten() -> None:
    from torchslim.quantize.adaround import AdaRoundConfig, adaround_

    model = TiedLM().eval()
    embedding = model.embed.weight.detach().clone()
    quantize_(model, QuantConfig(weight="int4"))
    ids = torch.randint(0, 32, (8, 12), generator=torch.Generator().manual_seed(0))
    assert set(gptq_(model, [ids])) == {"body"}
    assert set(adaround_(model, [ids], AdaRoundConfig(iterations=5))) == {"body"}
    assert torch.equal(model.embed.weight.detach(), embedding)

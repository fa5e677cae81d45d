"""Bounded memory of layer-by-layer calibration: two blocks' activations alive at a time, no
second copy of the weights (neither a rollback deep copy nor all layers' fake-quant caches)."""

from __future__ import annotations

import weakref

import pytest
import torch
from torch import nn

from torchslim import QuantConfig, quantize_, zoo
from torchslim._rollback import untouched_on_failure
from torchslim.quantize import gptq as gptq_module
from torchslim.quantize.gptq import GPTQConfig, gptq_
from torchslim.quantize.modules import WeightQuantizer

torch.set_num_threads(1)


def test_sequential_gptq_holds_two_blocks_of_activations(monkeypatch: pytest.MonkeyPatch) -> None:
    entry = zoo.get("tiny-llama")
    model, batches = entry.load(), entry.calibration_batches(6, batch_size=2)
    quantize_(model, QuantConfig(weight="uint4", ignore=()))
    produced: list[weakref.ref[torch.Tensor]] = []
    alive_counts: list[int] = []
    advance = gptq_module.advance

    def counting_advance(block: nn.Module, calls: list) -> list:
        alive_counts.append(sum(ref() is not None for ref in produced))
        result = advance(block, calls)
        produced.extend(weakref.ref(call.hidden) for call in result)
        return result

    monkeypatch.setattr(gptq_module, "advance", counting_advance)
    gptq_(model, batches, GPTQConfig(mode="sequential"))
    assert len(alive_counts) == 1  # 2 blocks: one advance
    assert all(count <= len(batches) for count in alive_counts)  # one block's outputs at most
    assert sum(ref() is not None for ref in produced) == 0  # none kept after the method
    quantizers = [m for m in model.modules() if isinstance(m, WeightQuantizer)]
    assert quantizers and all(q._cache is None for q in quantizers)  # no second weights kept


def test_rollback_restores_values_shapes_and_modules_without_copying_tensors() -> None:
    model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    weight = model[0].weight
    with pytest.raises(RuntimeError), untouched_on_failure(model):
        with torch.no_grad():
            model[0].weight.mul_(3.0)  # in place
            model[2].weight.data = torch.zeros(5, 5)  # new shape
        model[1] = nn.Identity()  # swapped module
        raise RuntimeError("failed half-way")
    assert model[0].weight is weight  # the user's parameter objects are kept, not copies
    assert isinstance(model[1], nn.ReLU)
    after = model.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), key

"""Streamed calibration: a meta skeleton filled block by block gives the in-memory results."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from torchslim import QuantConfig, quantize_, zoo
from torchslim.errors import ConfigError
from torchslim.prune import UnstructuredPruneConfig, prune_
from torchslim.quantize.awq import AWQConfig, awq_
from torchslim.quantize.gptq import GPTQConfig, gptq_
from torchslim.quantize.modules import QuantLinear
from torchslim.stream import StreamedMethod, calibrate_streamed_

torch.set_num_threads(1)
QUANT = QuantConfig(weight="uint4-g32", observer="minmax", ignore=("re:.*lm_head",))


class StateDictSource:
    """Tensors of a loaded model by name (tied weights once), copied on every read."""

    def __init__(self, model: nn.Module, on_read: Callable[[str], None] | None = None) -> None:
        self.state = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.on_read = on_read

    def names(self) -> set[str]:
        return set(self.state)

    def tensor(self, name: str) -> Tensor:
        if self.on_read is not None:
            self.on_read(name)
        return self.state[name].clone()


def skeleton(model: nn.Module) -> nn.Module:
    """``model``'s structure with every parameter on meta (buffers real), untied."""
    copied = copy.deepcopy(model)
    for module in copied.modules():
        for leaf, parameter in list(module._parameters.items()):
            if parameter is not None:
                module._parameters[leaf] = nn.Parameter(parameter.detach().to("meta"))
    return copied


@pytest.fixture(scope="module")
def tiny() -> tuple[nn.Module, list]:
    entry = zoo.get("tiny-llama")
    return entry.load(), entry.calibration_batches(4, batch_size=2)


def in_memory(model: nn.Module, method: str, batches: list) -> nn.Module:
    model = copy.deepcopy(model)
    if method in ("wanda", "sparsegpt"):
        prune_(model, UnstructuredPruneConfig(0.5, method, "layer"), calibration=batches)
        return model
    quantize_(model, QUANT)
    if method.startswith("awq"):
        awq_(model, batches, AWQConfig())
    if method.endswith("gptq"):
        gptq_(model, batches, GPTQConfig(mode="sequential", act_order=True))
    return model


STREAMED = {
    "rtn": StreamedMethod(quant=QUANT),
    "gptq": StreamedMethod(quant=QUANT, gptq=GPTQConfig(mode="sequential", act_order=True)),
    "awq": StreamedMethod(quant=QUANT, awq=AWQConfig()),
    "awq_gptq": StreamedMethod(
        quant=QUANT, awq=AWQConfig(), gptq=GPTQConfig(mode="sequential", act_order=True)
    ),
    "sparsegpt": StreamedMethod(prune=UnstructuredPruneConfig(0.5, "sparsegpt", "layer")),
    "wanda": StreamedMethod(prune=UnstructuredPruneConfig(0.5, "wanda", "layer")),
}


@pytest.mark.parametrize("method", list(STREAMED))
def test_streamed_equals_in_memory(tiny: tuple, method: str) -> None:
    model, batches = tiny
    expected = in_memory(model, method, batches)
    streamed = skeleton(model)
    calibrate_streamed_(streamed, StateDictSource(model), STREAMED[method], batches)
    got, want = streamed.state_dict(), expected.state_dict()
    assert sorted(got) == sorted(want)
    for name, tensor in want.items():
        assert torch.equal(got[name], tensor), name
    x = batches[0][0]
    with torch.no_grad():
        assert torch.equal(streamed(x), expected(x))
    tied = expected.model.lm_head.weight is expected.model.model.embed_tokens.weight
    assert (streamed.model.lm_head.weight is streamed.model.model.embed_tokens.weight) == tied


def test_one_block_at_a_time(tiny: tuple) -> None:
    """When a block's tensors are read, the earlier blocks are finished (quantized) and the
    later ones still on meta: one unprocessed block in memory at a time."""
    model, batches = tiny
    streamed = skeleton(model)
    blocks = streamed.model.model.layers
    seen: list[int] = []

    def on_read(name: str) -> None:
        if ".layers." not in name:
            return
        index = int(name.split(".layers.")[1].split(".")[0])
        if index not in seen:
            seen.append(index)
            for earlier in blocks[:index]:
                assert isinstance(earlier.self_attn.q_proj, QuantLinear)
            for later in blocks[index + 1 :]:
                assert all(p.is_meta for p in later.parameters())

    method = STREAMED["gptq"]
    calibrate_streamed_(streamed, StateDictSource(model, on_read), method, batches)
    assert seen == list(range(len(blocks)))
    assert not any(p.is_meta for p in streamed.parameters())


def test_failure_midway_leaves_the_skeleton_untouched(tiny: tuple) -> None:
    model, batches = tiny
    streamed = skeleton(model)
    before = {n: (type(m), tuple(p.shape for p in m.parameters(recurse=False)))
              for n, m in streamed.named_modules()}  # fmt: skip

    def fail_at_block_1(name: str) -> None:
        if ".layers.1." in name:
            raise OSError("checkpoint read failed")

    with pytest.raises(OSError, match="checkpoint read failed"):
        source = StateDictSource(model, fail_at_block_1)
        calibrate_streamed_(streamed, source, STREAMED["gptq"], batches)
    after = {n: (type(m), tuple(p.shape for p in m.parameters(recurse=False)))
             for n, m in streamed.named_modules()}  # fmt: skip
    assert after == before
    assert all(p.is_meta for p in streamed.parameters())


def test_whole_model_methods_are_refused() -> None:
    with pytest.raises(ConfigError, match="scope"):
        StreamedMethod(prune=UnstructuredPruneConfig(0.5, "wanda", "global"))
    with pytest.raises(ConfigError, match="static activation"):
        StreamedMethod(quant=QuantConfig(weight="int8", activation="uint8"))
    with pytest.raises(ConfigError, match="one"):
        StreamedMethod()

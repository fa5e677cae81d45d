"""Prune architectures torchslim has never seen to 50 % of their MACs (issue 17's acceptance).

Each model must: reach 50 % +- 3 points fewer MACs, still run with the same output shape,
reload through torchslim's record (a fresh original architecture resized, then loaded), and for
transformers models reload with *plain* ``from_pretrained``. A fast subset runs by default.
"""

from __future__ import annotations

import copy

import pytest
import torch

from architectures import HAND_WRITTEN, HUGGING_FACE, hand_written, hugging_face, main_output
from torchslim.profile import profile
from torchslim.prune import StructuredPruneConfig, load_pruned, prune_
from torchslim.prune._inputs import positional_inputs

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = {"conv_attention", "tiny_transformer", "llama_gqa"}  # the rest: `-m slow`
TOLERANCE = 0.03


def _marked(names: tuple[str, ...]) -> list[object]:
    return [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in names]


def _check_pruned(name: str, model: torch.nn.Module, inputs: object, build: object) -> None:
    args = positional_inputs(model, inputs)
    with torch.no_grad():
        shape_before = main_output(model(*args)).shape
    macs_before = profile(model, args, measure_memory=False).total.macs
    result = prune_(model, StructuredPruneConfig(target_macs_ratio=0.5), inputs)
    macs_after = profile(model, args, measure_memory=False).total.macs
    assert abs(macs_after / macs_before - 0.5) <= TOLERANCE, (name, macs_after / macs_before)
    with torch.no_grad():
        output = main_output(model(*args))
    assert output.shape == shape_before
    fresh = build()  # type: ignore[operator]
    load_pruned(fresh, result.record, model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(main_output(fresh.eval()(*args)), output)


@pytest.mark.parametrize("name", _marked(HAND_WRITTEN))
def test_hand_written_net_halves_macs(name: str) -> None:
    model, inputs, build = hand_written(name)
    _check_pruned(name, model, inputs, build)


@pytest.mark.parametrize("name", _marked(HUGGING_FACE))
def test_transformers_model_halves_macs_and_reloads_plainly(name: str, tmp_path: object) -> None:
    import transformers

    model, inputs, build = hugging_face(name)
    _check_pruned(name, model, inputs, build)
    model.save_pretrained(tmp_path)
    cls = getattr(transformers, type(model).__name__)
    reloaded = cls.from_pretrained(tmp_path).eval()
    args = positional_inputs(model, inputs)
    with torch.no_grad():
        torch.testing.assert_close(main_output(reloaded(*args)), main_output(model(*args)))


def test_example_inputs_tensor_tuple_and_dict_agree() -> None:
    model, inputs, _ = hand_written("tiny_transformer")
    config = StructuredPruneConfig(uniform_ratio=0.5)
    results = []
    for given in (inputs, (inputs,), {"ids": inputs}):
        copied = copy.deepcopy(model)
        results.append(prune_(copied, config, given).macs_after)
    assert results[0] == results[1] == results[2]

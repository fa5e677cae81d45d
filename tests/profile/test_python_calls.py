"""The interpreter's share of a forward pass is counted in a plain forward, and not at all on
meta."""

import torch
from torch import nn

from torchslim.profile import profile
from torchslim.profile.calls import CallCounter


def _helper(x: torch.Tensor) -> torch.Tensor:
    return x + 1


def test_counts_python_and_c_calls():
    x = torch.ones(2)
    with CallCounter() as empty:
        pass
    base = empty.calls  # leaving the block is a call or two itself
    with CallCounter() as plain:
        _helper(x)
        len([1])
    assert plain.calls == base + 2  # _helper, len


def test_profile_counts_calls_of_a_plain_forward_only_when_asked():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    x = torch.randn(2, 4)
    assert profile(model, (x,), measure_memory=False).python_calls is None
    counted = profile(model, (x,), measure_memory=False, count_calls=True)
    with torch.no_grad(), CallCounter() as plain:
        model(x)
    assert counted.python_calls == plain.calls > 0
    assert counted.to_dict()["python_calls"] == plain.calls
    on_meta = profile(model.to("meta"), (x.to("meta"),), measure_memory=False, count_calls=True)
    assert on_meta.python_calls is None  # estimated by the latency model instead

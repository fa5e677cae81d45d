"""bf16/fp16/fp8 capability checks: decided by measurement, slower formats never silent."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from torch import nn

from cpu_kinds import ZEN4
from models import tiny_convnet, tiny_images
from torchslim import _machine
from torchslim.deploy import CastModel, FormatSlowerError, check_format
from torchslim.deploy.formats import KEEP_MARGIN
from torchslim.errors import ConfigError


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 3)).eval()


@pytest.mark.parametrize("fmt", ["bfloat16", "float16"])
def test_verdict_follows_the_measured_times(fmt: str) -> None:
    x, _ = tiny_images(8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check = check_format(tiny_convnet(), (x,), fmt, rounds=5)
    assert check.fp32_ms is not None and check.format_ms is not None and check.speedup is not None
    assert check.speedup == pytest.approx(check.fp32_ms / check.format_ms)
    assert check.verdict == ("faster" if check.speedup >= KEEP_MARGIN else "slower")
    slower_warnings = [w for w in caught if re.search("SLOWER|NOT FASTER", str(w.message))]
    assert bool(slower_warnings) == (check.verdict == "slower")
    assert check.cosine > 0.99  # same model, lower precision


def test_a_slower_format_is_refused_with_the_measured_cost(monkeypatch: pytest.MonkeyPatch) -> None:
    original = CastModel.forward

    def slow_forward(self: CastModel, *inputs: torch.Tensor) -> torch.Tensor:
        for _ in range(20):  # an emulated kernel, made certain: 20x the work, whatever the load
            original(self, *inputs)
        return original(self, *inputs)

    monkeypatch.setattr(CastModel, "forward", slow_forward)
    # a CPU with native bf16 (Zen 4): the verdict is measured (without, it is refused up front)
    monkeypatch.setattr(_machine, "_cpuinfo", lambda: ("zen4", frozenset(ZEN4)))
    x, _ = tiny_images(4)
    with pytest.raises(FormatSlowerError, match=r"bfloat16 is [\d.]+x SLOWER than fp32"):
        check_format(tiny_convnet(), (x,), "bfloat16", on_slower="raise", rounds=3)
    with pytest.warns(RuntimeWarning, match="SLOWER"):
        check = check_format(tiny_convnet(), (x,), "bfloat16", on_slower="warn", rounds=3)
    assert check.verdict == "slower" and check.speedup is not None and check.speedup < 1


def test_bf16_without_native_compute_is_refused_before_any_race(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # an AVX2-only CPU (AMD Zen 2): torch emulates bf16; a race could keep it by luck
    monkeypatch.setattr(_machine, "_cpuinfo", lambda: ("zen2", frozenset({"avx2", "fma"})))
    raced: list[bool] = []
    monkeypatch.setattr(CastModel, "forward", lambda self, *x: raced.append(True))
    x, _ = tiny_images(4)
    with pytest.raises(FormatSlowerError, match="no native bf16 compute"):
        check_format(tiny_convnet(), (x,), "bfloat16", on_slower="raise", rounds=3)
    assert not raced


def test_fp8_is_storage_only_smaller_and_close() -> None:
    x, _ = tiny_images(32)
    check = check_format(_mlp(), (x,), "float8_e4m3fn")
    assert check.verdict == "storage-only" and "no fp8 compute kernels" in check.message
    assert check.fp32_ms is None and check.speedup is None
    assert check.format_size_bytes < 0.35 * check.fp32_size_bytes  # 1 byte per weight + scales
    assert check.cosine > 0.99


def test_unknown_format_is_a_config_error() -> None:
    x, _ = tiny_images(2)
    with pytest.raises(ConfigError, match="fmt must be one of"):
        check_format(tiny_convnet(), (x,), "int3")

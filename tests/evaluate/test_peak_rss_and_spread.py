"""Peak RSS of a block and the perplexity spread over windows: invariants, no timing."""

from __future__ import annotations

import math

import pytest
import torch

from torchslim.evaluate.memory import PeakRSS
from torchslim.zoo.text import perplexity_spread


def test_peak_rss_sees_a_block_allocation_freed_before_its_end() -> None:
    size = 256 * 2**20
    with PeakRSS() as rss:
        block = torch.ones(size, dtype=torch.uint8)  # touched pages: resident
        del block
    assert rss.peak_bytes - rss.start_bytes >= 0.9 * size
    if rss.reset:  # the high-water mark was reset on entry: a later small block sees no 256 MiB
        with PeakRSS() as small:
            torch.ones(2**20, dtype=torch.uint8)
        assert small.peak_bytes - small.start_bytes < 0.5 * size


def test_perplexity_spread_pairs_windows_with_the_reference() -> None:
    nlls = torch.tensor([3.0, 3.5, 4.0, 3.2], dtype=torch.float64)
    alone = perplexity_spread(nlls)
    assert alone["perplexity"] == pytest.approx(math.exp(float(nlls.mean())), rel=1e-3)
    low, high = alone["ci95"]
    assert low < alone["perplexity"] < high and alone["windows"] == 4
    same = perplexity_spread(nlls + 0.1, nlls)  # every window worse by the same 0.1 nats
    assert same["change_pct_vs_reference"] == pytest.approx(100 * math.expm1(0.1), abs=0.01)
    assert same["change_pct_ci95"][0] == pytest.approx(same["change_pct_ci95"][1], abs=0.01)

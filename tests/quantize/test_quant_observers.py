"""Calibration observers: ranges, clipping of outliers, bounded memory, bad-data errors."""

from __future__ import annotations

import pytest
import torch

from torchslim.errors import ConfigError
from torchslim.quantize import (
    CalibrationError,
    KLObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MSEObserver,
    PercentileObserver,
    QuantFormat,
    choose_observer_by_sqnr,
    fake_quantize,
    make_observer,
    observer_sqnr_db,
    sqnr_db,
)

torch.set_num_threads(1)
INT8 = QuantFormat.parse("int8-tensor")


def calibrate(name: str, fmt: QuantFormat, batches: list[torch.Tensor]) -> torch.Tensor:
    """Observe the batches, then return every batch fake-quantized and concatenated."""
    observer = make_observer(name, fmt)
    for batch in batches:
        observer.observe(batch)
    scale, zero_point = observer.compute_qparams()
    return torch.cat([fake_quantize(batch, fmt, scale, zero_point) for batch in batches])


@pytest.fixture(scope="module")
def outlier_activation() -> tuple[torch.Tensor, torch.Tensor]:
    """200 000 standard-normal values with 8 of them replaced by +-1000: (values, bulk mask)."""
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(200_000, generator=generator)
    where = torch.randperm(values.numel(), generator=generator)[:8]
    values[where] = 1000.0 * torch.tensor([1.0, -1.0] * 4)
    bulk = torch.ones_like(values, dtype=torch.bool)
    bulk[where] = False
    return values, bulk


@pytest.mark.parametrize(("name", "floor_db"), [("percentile", 38.0), ("kl", 15.0)])
def test_percentile_and_kl_clip_outliers_and_win_on_the_bulk(
    outlier_activation: tuple[torch.Tensor, torch.Tensor], name: str, floor_db: float
) -> None:
    values, bulk = outlier_activation
    batches = list(values.chunk(4))
    minmax = calibrate("minmax", INT8, batches)
    clipped = calibrate(name, INT8, batches)
    assert sqnr_db(values[bulk], minmax[bulk]) < 1.0  # a step of 7.8: the bulk rounds to 0
    # measured: percentile 40.5 dB (clip 3.9), kl 17.0 dB (clip 62: the 128-bin floor)
    assert sqnr_db(values[bulk], clipped[bulk]) > floor_db
    assert clipped.abs().max() < 100.0


def test_mse_keeps_rare_huge_outliers_because_clipping_them_costs_more(
    outlier_activation: tuple[torch.Tensor, torch.Tensor],
) -> None:
    values, _ = outlier_activation
    scores = observer_sqnr_db(list(values.chunk(4)), INT8)
    # MSE minimises total error: clipping eight 1000s costs more than the bulk's rounding
    # noise saves, so it matches min-max (16.1 dB) and beats the clipping observers (< 1 dB).
    assert scores["mse"] == pytest.approx(scores["minmax"], abs=0.05)
    assert scores["mse"] > max(scores["percentile"], scores["kl"]) + 10.0


@pytest.mark.parametrize("data", ["laplace", "moderate_outliers"])
def test_mse_clips_where_clipping_pays_at_4_bits(data: str) -> None:
    generator = torch.Generator().manual_seed(1)
    if data == "laplace":
        uniform = torch.rand(100_000, generator=generator) - 0.5
        values = -torch.sign(uniform) * torch.log1p(-2 * uniform.abs())  # Laplace(0, 1)
    else:
        values = torch.randn(100_000, generator=generator)
        values[:8] = 30.0
    fmt = QuantFormat.parse("int4-tensor")
    observer = MSEObserver(fmt)
    observer.observe(values)
    _, high = observer.quantization_range()
    assert high < 0.6 * values.abs().max()
    scores = observer_sqnr_db([values], fmt, ["minmax", "mse"])
    assert scores["mse"] > scores["minmax"] + 4.0  # measured +6.0 dB (laplace), +10.7 dB


def test_minmax_tracks_extremes_per_channel_across_batches() -> None:
    fmt = QuantFormat.parse("uint8-axis1")
    first, second = torch.randn(4, 3, 5, 5), torch.randn(2, 3, 5, 5) * 3  # (N, C, H, W)
    observer = MinMaxObserver(fmt)
    observer.observe(first)
    observer.observe(second)
    both = torch.cat([first, second])
    assert torch.equal(observer.min_val.flatten(), both.amin((0, 2, 3)))
    assert torch.equal(observer.max_val.flatten(), both.amax((0, 2, 3)))
    scale, zero_point = observer.compute_qparams()
    assert scale.shape == zero_point.shape == (1, 3, 1, 1)
    assert zero_point.dtype == torch.int32 and torch.all((zero_point > 0) & (zero_point < 255))
    approx = fake_quantize(both, fmt, scale, zero_point)
    assert torch.all((both - approx).abs() <= scale / 2 + 1e-6 * both.abs())


def test_minmax_group_granularity_gives_one_scale_per_group() -> None:
    observer = MinMaxObserver(QuantFormat.parse("int4-g16"))
    observer.observe(torch.randn(8, 64))
    scale, _ = observer.compute_qparams()
    assert scale.shape == (8, 4, 1)


def test_moving_average_follows_its_momentum() -> None:
    observer = MovingAverageMinMaxObserver(INT8, momentum=0.25)
    observer.observe(torch.tensor([-1.0, 2.0]))
    observer.observe(torch.tensor([-5.0, 6.0]))
    assert observer.min_val.item() == pytest.approx(-1.0 + 0.25 * (-5.0 + 1.0))
    assert observer.max_val.item() == pytest.approx(2.0 + 0.25 * (6.0 - 2.0))
    with pytest.raises(ConfigError, match=r"momentum=0; allowed: \(0, 1\]"):
        MovingAverageMinMaxObserver(INT8, momentum=0)


def test_percentile_per_channel_matches_exact_quantiles_with_bounded_memory() -> None:
    fmt = QuantFormat.parse("int8-axis-1")
    generator = torch.Generator().manual_seed(2)
    widths = torch.tensor([0.5, 1.0, 4.0])  # (C,)
    # growing batches force the histogram range to widen and re-bin
    batches = [torch.randn(2000, 3, generator=generator) * widths * (1 + i) for i in range(6)]
    observer = PercentileObserver(fmt, percentile=99.0)
    for batch in batches:
        observer.observe(batch)
    assert observer.histogram.counts is not None and observer.histogram.counts.shape == (3, 2048)
    _, high = observer.quantization_range()
    exact = torch.quantile(torch.cat(batches).abs(), 0.99, dim=0)  # (C,)
    assert high.shape == (1, 3)
    assert torch.allclose(high.flatten(), exact, rtol=0.02)


def test_percentile_asymmetric_uses_both_tails() -> None:
    values = torch.rand(50_000, generator=torch.Generator().manual_seed(3)) * 10 - 2  # U(-2, 8)
    observer = PercentileObserver(QuantFormat.parse("uint8-tensor"), percentile=99.0)
    observer.observe(values)
    low, high = observer.quantization_range()
    assert low.item() == pytest.approx(-1.9, abs=0.02)
    assert high.item() == pytest.approx(7.9, abs=0.02)


def test_kl_keeps_a_clean_gaussian_nearly_whole() -> None:
    values = torch.randn(100_000, generator=torch.Generator().manual_seed(4))
    observer = KLObserver(INT8)
    observer.observe(values)
    _, high = observer.quantization_range()
    assert 2.5 < high.item() <= values.abs().max().item()


def test_observers_reject_nan_inf_and_empty_batches_by_number() -> None:
    observer = MinMaxObserver(INT8)
    observer.observe(torch.randn(10))
    with pytest.raises(CalibrationError, match=r"calibration batch 1 contains 1 NaN and 0 Inf"):
        observer.observe(torch.tensor([1.0, float("nan")]))
    with pytest.raises(CalibrationError, match=r"calibration batch 1 contains 0 NaN and 2 Inf"):
        observer.observe(torch.tensor([float("inf"), -float("inf")]))
    with pytest.raises(CalibrationError, match=r"calibration batch 1 is empty"):
        observer.observe(torch.zeros(0, 4))
    with pytest.raises(CalibrationError, match=r"observed no calibration batch"):
        PercentileObserver(INT8).compute_qparams()
    with pytest.raises(ValueError):  # CalibrationError is a ValueError
        KLObserver(INT8).observe(torch.tensor([float("nan")]))


def test_observers_reject_changing_channels_and_unsupported_formats() -> None:
    observer = MinMaxObserver(QuantFormat.parse("int8-axis1"))
    observer.observe(torch.randn(2, 4))
    with pytest.raises(CalibrationError, match=r"channel layout \(2, 5\) differs"):
        observer.observe(torch.randn(2, 5))
    with pytest.raises(ConfigError, match=r"KLObserver format granularity 'channel'"):
        KLObserver(QuantFormat.parse("int8"))
    with pytest.raises(ConfigError, match=r"format kind 'binary'"):
        MinMaxObserver(QuantFormat.parse("binary"))
    with pytest.raises(ConfigError, match=r"unknown observer 'minmaxx'.*Did you mean \"minmax\""):
        make_observer("minmaxx", INT8)


def test_all_zero_calibration_gives_unit_scale() -> None:
    for name in ("minmax", "percentile", "mse", "kl"):
        observer = make_observer(name, QuantFormat.parse("uint8-tensor"))
        observer.observe(torch.zeros(100))
        scale, zero_point = observer.compute_qparams()
        assert scale.item() == 1.0 and zero_point.item() == 0, name


def test_choose_observer_by_sqnr_picks_the_best_scoring_candidate() -> None:
    generator = torch.Generator().manual_seed(5)
    uniform = torch.rand(4, 20_000, generator=generator) - 0.5
    samples = list(-torch.sign(uniform) * torch.log1p(-2 * uniform.abs()))  # Laplace batches
    fmt = QuantFormat.parse("int4-tensor")
    scores = observer_sqnr_db(samples, fmt)
    assert set(scores) == {"minmax", "moving_average", "percentile", "mse", "kl"}
    chosen = choose_observer_by_sqnr(samples, fmt)
    assert scores[chosen] == max(scores.values())
    assert scores[chosen] > scores["minmax"] + 3.0
    per_channel = observer_sqnr_db([torch.randn(8, 32)], QuantFormat.parse("int8"))
    assert "kl" not in per_channel  # per-tensor only, so not a default candidate
    with pytest.raises(CalibrationError, match=r"no calibration samples"):
        choose_observer_by_sqnr([], fmt)

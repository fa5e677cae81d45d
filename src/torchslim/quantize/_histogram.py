"""A running histogram per channel with a fixed number of bins: bounded calibration memory."""

from __future__ import annotations

import torch
from torch import Tensor


class RunningHistogram:
    """Counts of values in ``bins`` equal bins per row, over a range that grows as data comes.

    The range always contains 0 (quantization ranges do). When a batch falls outside it, the
    range widens to the batch's extremes and the old counts are re-binned: each old bin's count
    is split between the (at most two) new bins it overlaps, in proportion to the overlap.
    Memory is rows x bins float64 whatever the number of batches.
    """

    def __init__(self, bins: int) -> None:
        self.bins = bins
        self.counts: Tensor | None = None  # (C, B) float64
        self.low = torch.zeros(0, dtype=torch.float64)  # (C,) lower edge
        self.high = torch.zeros(0, dtype=torch.float64)  # (C,) upper edge
        self.seen_min = torch.zeros(0, dtype=torch.float64)  # (C,) exact extremes seen
        self.seen_max = torch.zeros(0, dtype=torch.float64)  # (C,)

    @property
    def width(self) -> Tensor:
        """Bin width per row."""
        return (self.high - self.low) / self.bins  # (C,)

    def update(self, rows: Tensor) -> None:
        """Add a batch given as (C, N): row c holds channel c's values."""
        rows = rows.to(torch.float64)  # (C, N)
        batch_min, batch_max = rows.amin(1), rows.amax(1)  # (C,) x 2
        low = batch_min.clamp(max=0.0)  # (C,)
        high = batch_max.clamp(min=0.0)  # (C,)
        if self.counts is None:
            channels = rows.shape[0]
            self.counts = torch.zeros(channels, self.bins, dtype=torch.float64)  # (C, B)
            self.low, self.high = low, torch.where(high > low, high, low + 1e-30)
            self.seen_min, self.seen_max = batch_min, batch_max
        else:
            self.seen_min = torch.minimum(self.seen_min, batch_min)  # (C,)
            self.seen_max = torch.maximum(self.seen_max, batch_max)  # (C,)
            if bool((low < self.low).any() or (high > self.high).any()):
                self._rebin(torch.minimum(low, self.low), torch.maximum(high, self.high))
        index = ((rows - self.low[:, None]) / self.width[:, None]).floor()  # (C, N)
        index = index.clamp(0, self.bins - 1).long()  # (C, N)
        offsets = torch.arange(rows.shape[0])[:, None] * self.bins  # (C, 1)
        flat = torch.bincount((index + offsets).reshape(-1), minlength=self.counts.numel())
        self.counts += flat.view_as(self.counts)  # (C, B)

    def _rebin(self, low: Tensor, high: Tensor) -> None:
        assert self.counts is not None
        old_width, new_width = self.width, (high - low) / self.bins  # (C,) x 2
        starts = self.low[:, None] + old_width[:, None] * torch.arange(self.bins)  # (C, B)
        start = (starts - low[:, None]) / new_width[:, None]  # (C, B) in new-bin units
        span = (old_width / new_width)[:, None]  # (C, 1), <= 1 as the range only grows
        first = start.floor().clamp(0, self.bins - 1)  # (C, B)
        share = ((first + 1 - start) / span).clamp(0, 1)  # (C, B) fraction in the first bin
        second = (first + 1).clamp(max=self.bins - 1).long()  # (C, B)
        counts = torch.zeros_like(self.counts)  # (C, B)
        counts.scatter_add_(1, first.long(), self.counts * share)
        counts.scatter_add_(1, second, self.counts * (1 - share))
        self.counts, self.low, self.high = counts, low, high

    def centers(self) -> Tensor:
        """Bin centres (C, B)."""
        return self.low[:, None] + self.width[:, None] * (torch.arange(self.bins) + 0.5)

    def quantile(self, fraction: float) -> Tensor:
        """Per-row value below which ``fraction`` of the counts lie (linear inside a bin),
        clamped to the exact extremes seen."""
        assert self.counts is not None
        cumulative = self.counts.cumsum(1)  # (C, B)
        target = fraction * cumulative[:, -1:]  # (C, 1)
        index = torch.searchsorted(cumulative, target).clamp(max=self.bins - 1)  # (C, 1)
        in_bin = self.counts.gather(1, index)  # (C, 1)
        before = cumulative.gather(1, index) - in_bin  # (C, 1)
        inside = ((target - before) / in_bin.clamp(min=1e-12)).clamp(0, 1)  # (C, 1)
        value = self.low[:, None] + self.width[:, None] * (index + inside)  # (C, 1)
        return torch.minimum(torch.maximum(value[:, 0], self.seen_min), self.seen_max)  # (C,)

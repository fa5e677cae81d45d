"""Weight sharing by 1-D k-means: a codebook of 2^b centroids and one code per weight.

Linear initialisation between the smallest and the largest weight, as Deep Compression found
best (Han et al., arXiv 1510.00149, section 3.2).
"""

from __future__ import annotations

import torch


def kmeans_1d(
    values: torch.Tensor, clusters: int, iterations: int = 30
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means of a 1-D tensor: (codebook (k,) sorted, codes (n,) int64)."""
    x = values.detach().double().flatten()  # (n,)
    centroids = torch.linspace(float(x.min()), float(x.max()), clusters, dtype=x.dtype)  # (k,)
    codes = _assign(x, centroids)
    for _ in range(iterations):
        sums = torch.zeros_like(centroids).scatter_add_(0, codes, x)  # (k,)
        counts = torch.zeros_like(centroids).scatter_add_(0, codes, torch.ones_like(x))  # (k,)
        filled = counts > 0
        updated = torch.where(filled, sums / counts.clamp_min(1), centroids)  # (k,)
        centroids, _ = torch.sort(updated)
        new_codes = _assign(x, centroids)
        if torch.equal(new_codes, codes):
            break
        codes = new_codes
    return centroids.to(values.dtype), codes


def _assign(x: torch.Tensor, sorted_centroids: torch.Tensor) -> torch.Tensor:
    """The nearest centroid of every value (centroids sorted: bucketize on the midpoints)."""
    midpoints = (sorted_centroids[1:] + sorted_centroids[:-1]) / 2  # (k-1,)
    return torch.bucketize(x, midpoints)  # (n,)

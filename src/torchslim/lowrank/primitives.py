"""The tensor math of low-rank factorization: truncated SVD, whitened SVD, Tucker-2, CP.

Truncated SVD of a Linear weight (Denton et al., arXiv 1404.0736); whitened, data-aware SVD that
minimises the error of the layer's *outputs* on calibration inputs (SVD-LLM, arXiv 2403.07378;
DRONE, NeurIPS 2021); Tucker-2 of a convolution kernel over its channel modes (Kim et al.,
arXiv 1511.06530), computed with tensorly's ``partial_tucker``; CP (PARAFAC) of a convolution
kernel over all four modes (Lebedev et al., arXiv 1412.6553) with tensorly's ``parafac``.
"""

from __future__ import annotations

import warnings

import torch


def spectrum(weight: torch.Tensor) -> torch.Tensor:
    """Singular values of a (out, in) matrix, largest first."""
    return torch.linalg.svdvals(weight.double()).float()  # (min(out, in),)


def rank_for_energy(singular_values: torch.Tensor, energy: float) -> int:
    """The smallest rank whose singular values keep ``energy`` of the squared total."""
    squares = singular_values.double().pow(2)  # (k,)
    kept = torch.cumsum(squares, 0) / squares.sum().clamp_min(1e-30)  # (k,)
    return int(torch.searchsorted(kept, torch.tensor(energy, dtype=kept.dtype)).item()) + 1


def truncated_svd(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``weight ≈ up @ down``: down (rank, in), up (out, rank), the singular values split evenly."""
    u, s, vh = torch.linalg.svd(weight.double(), full_matrices=False)  # (out,k) (k,) (k,in)
    root = s[:rank].sqrt()  # (r,)
    down = root[:, None] * vh[:rank]  # (r, in)
    up = u[:, :rank] * root[None, :]  # (out, r)
    return up.to(weight.dtype), down.to(weight.dtype)


def whitened_svd(
    weight: torch.Tensor, gram: torch.Tensor, rank: int, damping: float = 1e-4
) -> tuple[torch.Tensor, torch.Tensor]:
    """``weight ≈ up @ down`` minimising ``||(W - up @ down) X||`` on the calibration inputs X.

    ``gram`` is X Xᵀ (in, in). With its Cholesky factor L (X Xᵀ = L Lᵀ), the truncated SVD of
    W L is optimal for the whitened problem; the down projection maps back with L⁻¹ (SVD-LLM).
    """
    w = weight.double()  # (out, in)
    g = gram.double()  # (in, in)
    g = g + damping * g.diagonal().mean().clamp_min(1e-12) * torch.eye(len(g), dtype=g.dtype)
    chol = torch.linalg.cholesky(g)  # (in, in), lower
    u, s, vh = torch.linalg.svd(w @ chol, full_matrices=False)  # (out,k) (k,) (k,in)
    root = s[:rank].sqrt()  # (r,)
    # down = diag(root) Vhᵣ L⁻¹, solved as Lᵀ downᵀ = (diag(root) Vhᵣ)ᵀ
    scaled = root[:, None] * vh[:rank]  # (r, in)
    down = torch.linalg.solve_triangular(chol.T, scaled.T, upper=True).T  # (r, in)
    up = u[:, :rank] * root[None, :]  # (out, r)
    return up.to(weight.dtype), down.to(weight.dtype)


def channel_spectra(kernel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Singular values of a conv kernel's output-channel and input-channel unfoldings."""
    c_out, c_in = kernel.shape[:2]
    outputs = spectrum(kernel.reshape(c_out, -1))  # (≤c_out,)
    inputs = spectrum(kernel.transpose(0, 1).reshape(c_in, -1))  # (≤c_in,)
    return outputs, inputs


def tucker2(
    kernel: torch.Tensor, rank_out: int, rank_in: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``kernel ≈ core ×₀ U_out ×₁ U_in``: (first (r_in, c_in), core (r_out, r_in, kh, kw),
    last (c_out, r_out)) — the weights of a 1×1, a kh×kw and a 1×1 convolution."""
    import tensorly as tl
    from tensorly.decomposition import partial_tucker

    tl.set_backend("numpy")
    array = kernel.detach().double().cpu().numpy()  # (c_out, c_in, kh, kw)
    (core, factors), _ = partial_tucker(
        array, rank=[rank_out, rank_in], modes=[0, 1], init="svd", n_iter_max=50
    )
    last = torch.from_numpy(factors[0].copy())  # (c_out, r_out)
    first = torch.from_numpy(factors[1].T.copy())  # (r_in, c_in)
    core_t = torch.from_numpy(core.copy())  # (r_out, r_in, kh, kw)
    dtype = kernel.dtype
    return first.to(dtype), core_t.to(dtype), last.to(dtype)


def cp(
    kernel: torch.Tensor, rank: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``kernel[o, i, y, x] ≈ Σ_r last[o, r] first[r, i] vertical[r, y] horizontal[r, x]``:
    (first (r, c_in), vertical (r, kh), horizontal (r, kw), last (c_out, r)) — the weights of a
    1×1, a depthwise kh×1, a depthwise 1×kw and a 1×1 convolution (CP-ALS, SVD start)."""
    import tensorly as tl
    from tensorly.decomposition import parafac

    tl.set_backend("numpy")
    array = kernel.detach().double().cpu().numpy()  # (c_out, c_in, kh, kw)
    with warnings.catch_warnings():  # a rank above kh or kw: tensorly fills that mode's start
        warnings.filterwarnings("ignore", message="Trying to compute SVD with n_eigenvecs")
        weights, factors = parafac(
            array, rank=rank, init="svd", n_iter_max=200, tol=1e-8, random_state=seed
        )
    a, b, c, d = (torch.from_numpy(f.copy()) for f in factors)  # (c_out,r) (c_in,r) (kh,r) (kw,r)
    last = a * torch.from_numpy(weights.copy())[None, :]  # (c_out, r): the weights folded in
    dtype = kernel.dtype
    return b.T.to(dtype), c.T.to(dtype), d.T.to(dtype), last.to(dtype)

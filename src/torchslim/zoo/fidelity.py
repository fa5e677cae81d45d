"""How close a model's outputs stay to the original's, for models without labelled data.

Measured on the evaluation inputs: cosine similarity and max absolute error of the outputs, and
where the last dimension holds classes or tokens (size > 1), top-1 agreement and the mean KL
divergence KL(original || model) of their softmax. Perplexity of a causal language model on the
user's text is computed from the logits and the next tokens.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def fidelity(reference: torch.Tensor, output: torch.Tensor) -> dict[str, float]:
    """Compare ``output`` with ``reference`` (same shape); 1.0 cosine / agreement is identical."""
    if reference.shape != output.shape:
        raise ValueError(f"output shape {tuple(output.shape)} != original {tuple(reference.shape)}")
    ref, out = reference.double().flatten(), output.double().flatten()
    finite = bool(torch.isfinite(out).all())
    metrics = {"output_finite": float(finite)}
    if not finite:
        return {**metrics, "cosine": float("nan"), "max_abs_error": float("inf")}
    cosine = float(F.cosine_similarity(ref, out, dim=0, eps=1e-30))
    metrics["cosine"] = min(1.0, max(-1.0, cosine))  # rounding can step past 1
    metrics["max_abs_error"] = float((ref - out).abs().max())
    if reference.dim() >= 2 and reference.shape[-1] > 1:
        ref_logits = reference.double().flatten(0, -2)  # (rows, classes)
        logits = output.double().flatten(0, -2)
        agree = ref_logits.argmax(-1) == logits.argmax(-1)  # (rows,)
        metrics["top1_agreement"] = float(agree.double().mean())
        kl = F.kl_div(
            F.log_softmax(logits, -1), F.log_softmax(ref_logits, -1), log_target=True,
            reduction="batchmean",
        )  # fmt: skip
        metrics["kl_divergence"] = float(kl)
    return metrics


def perplexity(logits: torch.Tensor, token_ids: torch.Tensor) -> float:
    """exp(mean next-token negative log-likelihood): ``logits`` (B, T, V), ``token_ids`` (B, T)."""
    predicted = logits[:, :-1].double().flatten(0, 1)  # (B*(T-1), V)
    targets = token_ids[:, 1:].flatten()  # (B*(T-1),)
    return math.exp(float(F.cross_entropy(predicted, targets)))

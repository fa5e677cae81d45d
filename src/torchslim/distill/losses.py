"""Distillation losses: soft targets, hints with adapters, attention transfer, attention maps.

- ``KDLoss``: Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network"
  (arXiv:1503.02531): KL of temperature-softened distributions, scaled by T^2, mixed with CE.
- ``FeatureLoss``: Romero et al., "FitNets" (arXiv:1412.6550): MSE of a learned regressor of the
  student's hint layer against the teacher's guided layer; TinyBERT's hidden-state loss
  (arXiv:1909.10351) is the same with a linear adapter on (B, T, C).
- ``AttentionTransferLoss``: Zagoruyko & Komodakis (arXiv:1612.03928): distance between the
  L2-normalised spatial attention maps sum_c |A_c|^p.
- ``AttentionMapLoss``: TinyBERT / MiniLM (arXiv:2002.10957): KL between the teacher's and the
  student's self-attention distributions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from torchslim.errors import ConfigError


class DistillShapeError(ConfigError):
    """Teacher and student produce tensors that a distillation loss cannot compare."""


def _flat_classes(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1])  # (N, C): every leading position is one distribution


class KDLoss(nn.Module):
    """alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, labels).

    Logits are (B, C) or (B, ..., C); without labels only the soft term is returned.
    """

    def __init__(self, temperature: float = 4.0, alpha: float = 0.9) -> None:
        super().__init__()
        if not temperature > 0 or not 0 <= alpha <= 1:
            raise ConfigError(
                f"KDLoss(temperature={temperature}, alpha={alpha}): need temperature > 0 and "
                "alpha in [0, 1]."
            )
        self.temperature, self.alpha = temperature, alpha

    def forward(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if student_logits.shape != teacher_logits.shape:
            raise DistillShapeError(
                f"KD needs logits of the same shape: student {tuple(student_logits.shape)}, "
                f"teacher {tuple(teacher_logits.shape)}. Give the student the teacher's classes."
            )
        t = self.temperature
        s = F.log_softmax(_flat_classes(student_logits).float() / t, dim=-1)  # (N, C)
        q = F.log_softmax(_flat_classes(teacher_logits).float() / t, dim=-1)  # (N, C)
        soft = F.kl_div(s, q, reduction="batchmean", log_target=True) * t * t
        if labels is None or self.alpha == 1:
            return soft
        hard = F.cross_entropy(_flat_classes(student_logits).float(), labels.reshape(-1))
        return self.alpha * soft + (1 - self.alpha) * hard


class FeatureLoss(nn.Module):
    """MSE between adapter(student feature) and the teacher feature.

    ``channel_dim`` 1 is a conv map (B, C, H, W) with a 1x1-conv adapter; -1 is (B, ..., C) with
    a linear adapter. Equal widths use no adapter. A conv map of another spatial size is
    average-pooled to the teacher's size.
    """

    def __init__(self, student_width: int, teacher_width: int, channel_dim: int = 1) -> None:
        super().__init__()
        self.channel_dim = channel_dim
        self.adapter: nn.Module = nn.Identity()
        if student_width != teacher_width:
            self.adapter = (
                nn.Conv2d(student_width, teacher_width, 1, bias=False)
                if channel_dim == 1
                else nn.Linear(student_width, teacher_width, bias=False)
            )

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        projected = self.adapter(student)
        if self.channel_dim == 1 and projected.shape[-2:] != teacher.shape[-2:]:
            size = (teacher.shape[-2], teacher.shape[-1])
            projected = F.adaptive_avg_pool2d(projected, size)  # (B, C_t, H_t, W_t)
        if projected.shape != teacher.shape:
            raise DistillShapeError(
                f"feature shapes differ after the adapter: student {tuple(projected.shape)}, "
                f"teacher {tuple(teacher.shape)}."
            )
        return F.mse_loss(projected.float(), teacher.float())


def spatial_attention(feature: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """L2-normalised sum_c |A_c|^p of a (B, C, H, W) map, flattened: (B, H*W)."""
    attention = feature.float().abs().pow(p).mean(1)  # (B, H, W)
    return F.normalize(attention.flatten(1), dim=1)  # (B, H*W)


class AttentionTransferLoss(nn.Module):
    """beta/2 * mean squared distance of the normalised spatial attention maps (AT)."""

    def __init__(self, p: float = 2.0, beta: float = 1000.0) -> None:
        super().__init__()
        self.p, self.beta = p, beta

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if student.ndim != 4 or teacher.ndim != 4:
            raise DistillShapeError(
                "attention transfer needs conv maps (B, C, H, W); got student "
                f"{tuple(student.shape)}, teacher {tuple(teacher.shape)}."
            )
        if student.shape[-2:] != teacher.shape[-2:]:
            student = F.interpolate(student, size=teacher.shape[-2:], mode="bilinear")
        difference = spatial_attention(student, self.p) - spatial_attention(teacher, self.p)
        return self.beta / 2 * difference.pow(2).mean()


def attention_probabilities(query: torch.Tensor, key: torch.Tensor, heads: int) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d)) per head from projected queries and keys (B, T, C): (B, H, T, T).

    Padding is not masked: teacher and student see the same padded positions.
    """
    b, t, c = query.shape
    q = query.float().view(b, t, heads, c // heads).transpose(1, 2)  # (B, H, T, D)
    k = key.float().view(b, t, heads, c // heads).transpose(1, 2)  # (B, H, T, D)
    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(c // heads), dim=-1)  # (B, H, T, T)


class AttentionMapLoss(nn.Module):
    """KL(teacher attention || student attention) averaged over batch, heads and query rows.

    With different head counts the head-averaged maps are compared.
    """

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if student.shape[1] != teacher.shape[1]:
            student, teacher = student.mean(1, keepdim=True), teacher.mean(1, keepdim=True)
        if student.shape != teacher.shape:
            raise DistillShapeError(
                f"attention maps differ: student {tuple(student.shape)}, teacher "
                f"{tuple(teacher.shape)}; teacher and student must see the same tokens."
            )
        rows = student.shape[-1]
        log_s = student.clamp_min(1e-12).log().reshape(-1, rows)  # (B*H*T, T)
        log_t = teacher.clamp_min(1e-12).log().reshape(-1, rows)  # (B*H*T, T)
        return F.kl_div(log_s, log_t, reduction="batchmean", log_target=True)

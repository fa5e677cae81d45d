"""The loss modules against their papers' definitions."""

import pytest
import torch
import torch.nn.functional as F

from torchslim.distill import (
    AttentionMapLoss,
    AttentionTransferLoss,
    DistillShapeError,
    FeatureLoss,
    KDLoss,
)
from torchslim.distill.losses import attention_probabilities
from torchslim.errors import ConfigError


def test_kd_loss_is_t_squared_kl_mixed_with_cross_entropy():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    labels = torch.randint(0, 5, (6,), generator=g)
    t, alpha = 3.0, 0.7
    p_teacher = torch.softmax(teacher / t, -1)
    kl = (p_teacher * (p_teacher.log() - torch.log_softmax(student / t, -1))).sum(-1).mean()
    expected = alpha * t * t * kl + (1 - alpha) * F.cross_entropy(student, labels)
    torch.testing.assert_close(KDLoss(t, alpha)(student, teacher, labels), expected)
    assert float(KDLoss(t, alpha)(teacher, teacher)) == pytest.approx(0.0, abs=1e-6)


def test_kd_soft_gradient_scale_does_not_vanish_with_temperature():
    """Hinton et al.: the soft gradients scale as 1/T^2, so the T^2 factor keeps them O(1)."""
    g = torch.Generator().manual_seed(1)
    teacher = torch.randn(8, 10, generator=g)
    norms = []
    for t in (2.0, 8.0):
        student = torch.zeros(8, 10, requires_grad=True)
        KDLoss(t, alpha=1.0)(student, teacher).backward()
        norms.append(float(student.grad.norm()))
    assert 0.2 < norms[1] / norms[0] < 1.5


def test_kd_loss_rejects_mismatched_logits_and_bad_settings():
    with pytest.raises(DistillShapeError, match=r"student \(2, 5\), teacher \(2, 10\)"):
        KDLoss()(torch.zeros(2, 5), torch.zeros(2, 10))
    with pytest.raises(ConfigError, match="alpha"):
        KDLoss(2.0, 1.5)


def test_feature_loss_adapter_learns_a_width_change():
    g = torch.Generator().manual_seed(0)
    student = torch.randn(4, 3, 6, 6, generator=g)
    mixing = torch.randn(5, 3, generator=g)
    teacher = torch.einsum("oc,bchw->bohw", mixing, student)  # (4, 5, 6, 6)
    loss = FeatureLoss(3, 5, channel_dim=1)
    assert isinstance(loss.adapter, torch.nn.Conv2d)
    optimizer = torch.optim.Adam(loss.parameters(), lr=0.05)
    start = float(loss(student, teacher).detach())
    for _ in range(300):
        optimizer.zero_grad()
        value = loss(student, teacher)
        value.backward()
        optimizer.step()
    assert float(value.detach()) < 0.01 * start  # a 1x1 conv can represent the mixing exactly


def test_feature_loss_hidden_states_and_pooling():
    hidden = FeatureLoss(16, 32, channel_dim=-1)
    assert isinstance(hidden.adapter, torch.nn.Linear)
    assert hidden(torch.randn(2, 7, 16), torch.randn(2, 7, 32)).ndim == 0
    same = FeatureLoss(4, 4)
    teacher = torch.randn(2, 4, 4, 4)
    student = teacher.repeat_interleave(2, -1).repeat_interleave(2, -2)  # (2, 4, 8, 8)
    assert float(same(student, teacher)) == pytest.approx(0.0, abs=1e-10)  # pooled to 4x4


def test_attention_transfer_is_zero_for_rescaled_maps_and_positive_otherwise():
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(2, 8, 6, 6, generator=g)
    at = AttentionTransferLoss()
    assert float(at(2.0 * teacher, teacher)) == pytest.approx(0.0, abs=1e-6)  # normalised maps
    assert float(at(torch.randn(2, 4, 6, 6, generator=g), teacher)) > 0
    assert at(torch.randn(2, 4, 12, 12), teacher).ndim == 0  # other spatial size: interpolated


def test_attention_probabilities_and_map_loss():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 5, 8, generator=g), torch.randn(2, 5, 8, generator=g)
    probs = attention_probabilities(q, k, heads=2)  # (2, 2, 5, 5)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 2, 5))
    manual = torch.softmax(q[:, :, :4] @ k[:, :, :4].transpose(1, 2) / 2.0, -1)  # head 0, d=4
    torch.testing.assert_close(probs[:, 0], manual)
    loss = AttentionMapLoss()
    assert float(loss(probs, probs)) == pytest.approx(0.0, abs=1e-6)
    other = attention_probabilities(k, q, heads=4)
    assert float(loss(other, probs)) > 0  # 4 vs 2 heads: head-averaged maps compared

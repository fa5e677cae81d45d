"""CPU kinds the suite must hold on, as ISA flags a DeployConfig (or a patched detection) can
stand in for, and the one invariant every deploy test asserts on any of them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from torch import nn

from torchslim._machine import int8_products_saturate
from torchslim.deploy import DeployConfig, DeployedModel, DeployError, deploy

# AMD EPYC Zen 2: AVX2 + FMA, no VNNI, no BF16 (int8 products saturate: 7-bit weights).
ZEN2 = ("avx2", "fma")
# AMD EPYC Zen 4: AVX-512 with VNNI and BF16 (full-range int8 weights).
ZEN4 = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16")
CPU_KINDS = pytest.mark.parametrize("cpu", [ZEN2, ZEN4], ids=["zen2-avx2", "zen4-vnni"])


def deploy_or_refusal(
    model: nn.Module, calibration: Sequence[Any], config: DeployConfig
) -> DeployedModel | None:
    """``deploy``, or None where it refused every candidate: allowed only for full-range int8
    weights built for a VNNI CPU while this one may lack VNNI (its kernels then saturate and
    the agreement check must refuse), and the error must name each candidate and why.
    Reduced-range weights cannot saturate on any CPU: they must deploy everywhere."""
    try:
        return deploy(model, calibration, config)
    except DeployError as error:
        message = str(error)
        assert not int8_products_saturate(config.features()), message
        assert "disagreeing with fp32" in message and "Built for CPU features" in message
        assert "cosine" in message and "top1_agreement" in message  # each refused, with why
        return None

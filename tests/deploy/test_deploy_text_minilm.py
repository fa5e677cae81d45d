"""The real all-MiniLM-L6-v2 deployed in int8 keeps its metrics (issue 5's accuracy targets)."""

from __future__ import annotations

import pytest

import torchslim.zoo
from torchslim.deploy.text_config import TextDeployConfig
from torchslim.deploy.text_int8 import deploy_text_int8


@pytest.mark.slow
@pytest.mark.assets
def test_minilm_int8_keeps_cosine_and_wordsim():
    entry = torchslim.zoo.get("minilm")
    model = entry.load()
    config = TextDeployConfig(batch_sizes=(1,), rounds=3, warmup=1, threads=2)
    deployed = deploy_text_int8(model, entry, config=config)
    fp32, int8 = entry.evaluate(model), entry.evaluate(deployed)
    assert int8["cosine_vs_fp32"] >= 0.99
    assert fp32["wordsim353_spearman"] - int8["wordsim353_spearman"] <= 0.01
    assert deployed.saved_size_bytes() < 0.4 * 90e6  # fp32 ONNX export: about 90 MB
    # every candidate that ran was checked on the real sentences
    for name, figures in deployed.decision["candidates"].items():
        if figures["status"] in ("chosen", "accepted", "rejected"):
            assert "cosine_mean" in figures, name

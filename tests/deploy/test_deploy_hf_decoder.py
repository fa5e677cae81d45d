"""A Hugging Face decoder (Llama with GQA) exports to ONNX and deploys as static INT8.

transformers' packed-sequence detection (``torch.diff`` with ``prepend`` and a boolean
``cumsum``) runs when a decoder is called with token ids alone; the zoo's wrapper passes an
all-ones attention mask instead, which gives the same logits and an exportable graph.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from torchslim import zoo
from torchslim.cli import app
from torchslim.deploy._onnx import export_failure, export_onnx


def test_wrapper_mask_gives_the_same_logits_as_token_ids_alone():
    model = zoo.get("tiny-llama").load()
    (ids,) = zoo.get("tiny-llama").example_inputs(2)
    with torch.no_grad():
        plain = model.model(input_ids=ids).logits
        wrapped = model(ids)
    assert torch.equal(plain, wrapped)


def test_llama_exports_to_onnx_and_agrees_with_eager(tmp_path):
    entry = zoo.get("tiny-llama")
    model = entry.load()
    (ids,) = entry.example_inputs(2)
    assert export_onnx(model, (ids,), tmp_path / "m.onnx") == "torchscript"
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    onnx_logits = session.run(None, {"input_0": ids.numpy()})[0]
    with torch.no_grad():
        assert np.abs(onnx_logits - model(ids).numpy()).max() < 1e-4


def test_export_failure_is_one_readable_line_without_colour_codes():
    try:
        try:
            raise ValueError("\x1b[96mreal reason\x1b[0m\nmore detail")
        except ValueError as cause:
            raise RuntimeError("This is step 1/3 of exporting") from cause
    except RuntimeError as error:
        assert export_failure(error) == "ValueError: real reason"


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_quantize_w8a8_deploys_a_huggingface_llama_directory(tmp_path, backend):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    sizes = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2}
    config = LlamaConfig(vocab_size=256, num_attention_heads=4, num_key_value_heads=2, **sizes)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "llama")
    result = CliRunner().invoke(
        app, ["quantize", str(tmp_path / "llama"), "--scheme", "w8a8", "--deploy", backend,
              "--out", str(tmp_path / "q"), "--repeats", "3"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "execution: deployed" in result.output

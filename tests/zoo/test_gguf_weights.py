"""The GGUF tensor table (read by deploy.gguf_file) and the tensor-by-tensor SmolLM2 load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from torchslim.deploy.gguf_file import check_gguf
from torchslim.errors import ModelLoadError
from torchslim.zoo import text
from torchslim.zoo._gguf import _tensor_data


def _write_gguf(path: Path) -> dict[str, np.ndarray]:
    """A small GGUF: a vocabulary array (skipped by the reader), an F32 and a Q8_0 tensor."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_token_list([f"token{i}" for i in range(300)])
    writer.add_token_scores([0.5] * 300)
    rng = np.random.default_rng(0)
    plain = rng.standard_normal((3, 64)).astype(np.float32)
    quantized = rng.standard_normal((4, 64)).astype(np.float32)
    codes = gguf.quants.quantize(quantized, gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("plain.weight", plain)
    writer.add_tensor("q8.weight", codes, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    expected = gguf.quants.dequantize(codes, gguf.GGMLQuantizationType.Q8_0)
    return {"plain.weight": plain, "q8.weight": expected}


def test_header_reader_finds_every_tensor_and_its_bytes(tmp_path: Path) -> None:
    from gguf import dequantize

    path = tmp_path / "small.gguf"
    expected = _write_gguf(path)
    header = check_gguf(path)
    assert header.architecture == "llama"
    assert [info.name for info in header.tensors] == list(expected)
    for info in header.tensors:
        values = dequantize(_tensor_data(path, info), info.ggml_type)
        np.testing.assert_array_equal(values, expected[info.name])


def test_a_file_that_is_not_gguf_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"PK\x03\x04" + bytes(64))
    with pytest.raises(ModelLoadError, match="not a GGUF"):
        check_gguf(path)


@pytest.mark.assets
@pytest.mark.slow
def test_smollm2_streamed_load_equals_transformers_gguf_load() -> None:
    from transformers import AutoModelForCausalLM

    path = text.package_file(*text.SMOLLM_GGUF)
    reference = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    ).state_dict()
    loaded = text.SmolLM2().load().model
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight  # tied, as in the GGUF
    state = loaded.state_dict()
    assert sorted(state) == sorted(reference)
    for name, tensor in reference.items():
        assert torch.equal(state[name], tensor), name


@pytest.mark.assets
@pytest.mark.slow  # loading the tokenizer from the GGUF: 10-16 s
def test_cached_token_ids_equal_a_fresh_tokenization() -> None:
    cached = text._source_tokens("lee-eval")  # written on the first call, read back after
    fresh = text._smollm_tokenizer()(text.SMOLLM_TEXTS["lee-eval"](), add_special_tokens=False)
    assert torch.equal(cached, torch.tensor(fresh["input_ids"], dtype=torch.int64))
    assert torch.equal(text._source_tokens("lee-eval"), cached)

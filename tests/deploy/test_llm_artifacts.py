"""LLM artifacts a peer runtime runs: a GGUF (llama.cpp) and a compressed-tensors directory
(transformers) written by a recipe, read back by ``torchslim.load`` and ``torchslim evaluate``.

The model is the zoo's tiny random LLaMA; its GGUF template (hyper-parameters, a placeholder
SentencePiece vocabulary, the float tensors) is written here with gguf-py, as llama.cpp's
converter would.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import torchslim
from torchslim import QuantConfig, quantize_, zoo
from torchslim.cli import app
from torchslim.deploy.gguf_file import check_gguf
from torchslim.errors import ConfigError, ModelLoadError
from torchslim.pipeline import parse_recipe
from torchslim.pipeline.runner import RunOptions, compress

pytest.importorskip("llama_cpp")
pytest.importorskip("compressed_tensors")
torch.set_num_threads(1)

CONTRACT = {"model", "metrics", "params", "size_bytes", "latency_ms", "peak_memory_bytes"}
QUANTIZE = (
    "  - step: quantize\n    weight: {weight}\n    observer: minmax\n    ignore: ['re:.*lm_head']\n"
)
FAST = RunOptions(repeats=3, measure_stages=False, threads=1)


def write_template(model: nn.Module, path: Path) -> Path:
    """A float32 GGUF of the tiny LLaMA ``model`` (a zoo wrapper), as llama.cpp's converter
    writes one: the template ``export_gguf`` copies keys and unquantized tensors from."""
    import gguf

    from torchslim.deploy.gguf_llama import _float_tensors

    llama = model.model
    config = llama.config
    writer = gguf.GGUFWriter(path, arch="llama")
    writer.add_context_length(512)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(0)  # all F32
    # a SentencePiece vocabulary of placeholder words; any text falls back to byte tokens
    words = config.vocab_size - 3 - 256
    writer.add_tokenizer_model("llama")
    writer.add_token_list(["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)),
                           *(f"\u2581w{i}" for i in range(words))])  # fmt: skip
    writer.add_token_scores([0.0] * config.vocab_size)
    writer.add_token_types([2, 3, 3, *[6] * 256, *[1] * words])  # unknown, control, byte, normal
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    tensors = _float_tensors(model, config.num_attention_heads, config.num_key_value_heads)
    tensors["output.weight"] = llama.lm_head.weight.detach().float().numpy()  # not tied
    for name, value in tensors.items():
        writer.add_tensor(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def gguf_artifact(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """tiny-llama, int4-g32 (round to nearest) written as GGUF Q4_0 by the pipeline."""
    root = tmp_path_factory.mktemp("gguf")
    entry = zoo.get("tiny-llama")
    template = write_template(entry.load(), root / "template.gguf")
    recipe = parse_recipe(
        "version: 1\nstages:\n" + QUANTIZE.format(weight="int4-g32")
        + f"  - step: gguf\n    template: {template}\n    threads: 1\n"
    )  # fmt: skip
    return root / "q4_0", compress(entry, recipe, root / "q4_0", FAST)


@pytest.fixture(scope="module")
def ct_artifact(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """tiny-llama, uint4-g64 (round to nearest) written as compressed-tensors by the pipeline."""
    out = tmp_path_factory.mktemp("ct") / "uint4"
    stages = QUANTIZE.format(weight="uint4-g64") + "  - step: compressed_tensors\n"
    recipe = parse_recipe("version: 1\nstages:\n" + stages)
    return out, compress(zoo.get("tiny-llama"), recipe, out, FAST)


def fake_quant_logits(weight: str, ids: torch.Tensor) -> torch.Tensor:
    model = zoo.get("tiny-llama").load()
    quantize_(model, QuantConfig(weight=weight, observer="minmax", ignore=("re:.*lm_head",)))
    with torch.no_grad():
        return model(ids)  # (B, T, V)


def test_a_gguf_artifact_loads_on_llama_cpp_with_the_figures_it_was_measured_with(
    gguf_artifact: tuple[Path, object],
) -> None:
    out, outcome = gguf_artifact
    entry = zoo.get("tiny-llama")
    loaded = torchslim.load(out)
    assert type(loaded).__name__ == "LlamaCppModel" and loaded.threads == 1
    report = torchslim.evaluate(loaded, entry, repeats=3)
    assert report.metrics == outcome.after.metrics  # bit-exact: the same file, the same kernels
    assert report.size_bytes == (out / "model.gguf").stat().st_size == outcome.after.size_bytes
    assert report.params == check_gguf(out / "model.gguf").parameters == outcome.after.params
    # against torchslim's fake-quant model: llama.cpp rounds activations to 8 bits for Q4_0
    ids = entry.example_inputs(2)[0]  # (2, 16)
    expected, got = fake_quant_logits("int4-g32", ids), loaded(ids)
    cosine = torch.nn.functional.cosine_similarity(got.flatten(), expected.flatten(), dim=0)
    assert float(cosine) > 0.999
    assert torch.equal(torchslim.load(out)(ids), got)  # a second load: the same logits


def test_a_compressed_tensors_artifact_loads_through_transformers_with_torchslims_logits(
    ct_artifact: tuple[Path, object],
) -> None:
    out, outcome = ct_artifact
    entry = zoo.get("tiny-llama")
    loaded = torchslim.load(out)
    assert type(loaded).__name__ == "CompressedTensorsModel"
    assert type(loaded.model.model).__name__ == "LlamaForCausalLM"  # in the zoo's wrapper
    report = torchslim.evaluate(loaded, entry, repeats=3)
    assert report.metrics == outcome.after.metrics
    assert report.size_bytes == (out / "model.safetensors").stat().st_size
    ids = entry.example_inputs(2)[0]
    with torch.no_grad():
        got = loaded(ids)
    torch.testing.assert_close(got, fake_quant_logits("uint4-g64", ids), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("artifact", ["gguf_artifact", "ct_artifact"])
def test_evaluate_json_on_an_llm_artifact_follows_the_contract(
    artifact: str, request: pytest.FixtureRequest
) -> None:
    out, outcome = request.getfixturevalue(artifact)
    args = ["evaluate", str(out), "--json", "--repeats", "3", "--threads", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report) >= CONTRACT and set(report["latency_ms"]) >= {"median", "p90"}
    assert report["model"] == str(out) and report["metrics"] == outcome.after.metrics
    assert report["latency_ms"]["median"] > 0 and report["size_bytes"] == outcome.after.size_bytes
    assert report["details"]["threads"] == 2


def test_threads_reach_llama_cpp_and_flags_a_path_does_not_use_are_refused(
    gguf_artifact: tuple[Path, object], ct_artifact: tuple[Path, object]
) -> None:
    gguf_out, ct_out = gguf_artifact[0], ct_artifact[0]
    loaded = torchslim.load(gguf_out, threads=3)
    assert loaded.threads == 3 and loaded.llm.context_params.n_threads == 3
    assert loaded.llm.context_params.n_threads_batch == 3
    with pytest.raises(ConfigError, match=r"llama\.cpp on the CPU"):
        torchslim.load(gguf_out, device="cuda")
    result = CliRunner().invoke(app, ["evaluate", str(ct_out), "--seq-len", "8"])
    assert result.exit_code != 0 and "--seq-len" in str(result.exception)


def test_threads_for_a_module_artifact_are_refused(tmp_path: Path) -> None:
    recipe = parse_recipe("version: 1\nstages:\n" + QUANTIZE.format(weight="int8"))
    compress(zoo.get("tiny-llama"), recipe, tmp_path / "m", FAST)
    with pytest.raises(ConfigError, match=r"torch\.set_num_threads"):
        torchslim.load(tmp_path / "m", threads=2)


def _with_gguf(source: Path, target: Path, data: bytes) -> Path:
    """A copy of the artifact ``source`` whose model.gguf holds ``data``."""
    target.mkdir()
    for file in source.iterdir():
        (target / file.name).write_bytes(file.read_bytes())
    (target / "model.gguf").write_bytes(data)
    return target


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda data: data[: len(data) - 1000], "is truncated: .* tensors end at byte"),
        (lambda data: data[:5000], "is truncated: its header runs past the end"),
        (lambda data: data[:20], "less than a GGUF header"),
        (lambda data: b"PK\x03\x04" + data[4:], "is not a GGUF file: it starts with b'PK"),
        (lambda data: data[:4] + struct.pack("<I", 1) + data[8:], "GGUF version 1; llama.cpp"),
    ],
)
def test_a_broken_gguf_is_one_clear_error_naming_the_file(
    gguf_artifact: tuple[Path, object], tmp_path: Path, change, message: str
) -> None:
    data = (gguf_artifact[0] / "model.gguf").read_bytes()
    broken = _with_gguf(gguf_artifact[0], tmp_path / "broken", change(data))
    with pytest.raises(ModelLoadError, match=message) as error:
        torchslim.load(broken)
    assert str(broken / "model.gguf") in str(error.value)
    result = CliRunner().invoke(app, ["evaluate", str(broken), "--json"])
    assert result.exit_code != 0 and isinstance(result.exception, ModelLoadError)


def test_an_altered_gguf_of_the_right_size_fails_its_checksum(
    gguf_artifact: tuple[Path, object], tmp_path: Path
) -> None:
    from torchslim.deploy.config import DeployError

    data = bytearray((gguf_artifact[0] / "model.gguf").read_bytes())
    data[-1] ^= 0xFF  # a weight byte: the header is sound, the content is not what was measured
    broken = _with_gguf(gguf_artifact[0], tmp_path / "altered", bytes(data))
    with pytest.raises(DeployError, match="checksum"):
        torchslim.load(broken)


def test_generate_runs_a_gguf_artifact_and_refuses_other_artifacts(
    gguf_artifact: tuple[Path, object], ct_artifact: tuple[Path, object]
) -> None:
    args = [
        "--prompt",
        "It was a fine morning",
        "--max-new-tokens",
        "4",
        "--threads",
        "1",
        "--json",
    ]
    result = CliRunner().invoke(app, ["generate", str(gguf_artifact[0]), *args])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)
    assert figures["runtime"] == "llama.cpp" and figures["new_tokens"] == 4
    assert figures["prompt_tokens"] > 0 and figures["threads"] == 1
    refused = CliRunner().invoke(app, ["generate", str(ct_artifact[0]), *args])
    assert refused.exit_code != 0 and "without a GGUF" in str(refused.exception)

"""The artifact of a transformers model is a Hugging Face directory: plain ``from_pretrained``
loads it and gives ``torchslim.load``'s outputs; where config.json cannot describe the model,
the manifest says so and no config.json is written; version-1 artifacts still load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from safetensors import safe_open
from typer.testing import CliRunner

import torchslim
from torchslim import zoo
from torchslim._io import load_tensors, save_tensors
from torchslim.cli import app
from torchslim.pipeline import parse_recipe
from torchslim.pipeline.runner import RunOptions, compress
from torchslim.prune import load_pruned_artifact
from torchslim.zoo.options import resolve_model

FAST = RunOptions(repeats=1, measure_stages=False)
PRUNE_HALF = "version: 1\nstages:\n  - step: prune\n    method: l2\n    target: ratio=0.5\n"
PRUNE_MACS = "version: 1\nstages:\n  - step: prune\n    method: l2\n    target: macs=0.3\n"
DROP_LAST = "version: 1\nstages:\n  - step: drop_layers\n    layers: [1]\n"
# layer 0's MLP kept whole, layer 1's halved: one intermediate_size cannot say both
PRUNE_BUT_LAYER_0 = PRUNE_HALF + "    ignore: ['re:.*layers[.]0[.]mlp.*']\n"
INT8 = "version: 1\nstages:\n  - step: quantize\n    weight: int8\n    calibration_batches: 2\n"

pytestmark = pytest.mark.usefixtures("one_thread")


def _run(name: str, recipe: str, out: Path) -> dict:
    compress(zoo.get(name), parse_recipe(recipe), out, FAST)
    return json.loads((out / "manifest.json").read_text())


def _plain_output(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    with torch.no_grad():
        output = model.eval()(*inputs)
    return output.logits if getattr(output, "logits", None) is not None else output[0]


@pytest.mark.parametrize(
    ("name", "recipe", "auto_class"),
    [
        ("tiny-llama", PRUNE_HALF, "AutoModelForCausalLM"),  # heads, KV groups and MLP widths
        ("tiny-vit", PRUNE_MACS, "AutoModelForImageClassification"),
        ("tiny-bert", DROP_LAST, "AutoModel"),  # num_hidden_layers; built without a pooler
    ],
)
def test_from_pretrained_loads_the_artifact_as_torchslim_load_does(
    name: str, recipe: str, auto_class: str, tmp_path: Path
) -> None:
    out = tmp_path / "artifact"
    manifest = _run(name, recipe, out)
    assert manifest["artifact_version"] == 2 and manifest["hf_loadable"] is True
    assert manifest["hf"]["auto_class"] == auto_class and manifest["weights_prefix"] == "model."
    auto = getattr(transformers, auto_class)
    kwargs = manifest["hf"]["from_pretrained_kwargs"]
    plain, info = auto.from_pretrained(out, output_loading_info=True, **kwargs)
    assert {key: value for key, value in info.items() if value} == {}  # nothing missing/unexpected
    with safe_open(str(out / "model.safetensors"), framework="pt") as handle:
        stored = set(handle.keys())
    assert stored <= set(plain.state_dict())  # the transformers model's own names, no wrapper's
    ours = torchslim.load(out)
    inputs = tuple(zoo.get(name).example_inputs(2))
    with torch.no_grad():
        expected = ours(*inputs)
    torch.testing.assert_close(_plain_output(plain, inputs), expected, rtol=1e-5, atol=1e-5)
    assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in ours.parameters())


def test_the_config_records_what_pruning_changed(tmp_path: Path) -> None:
    manifest = _run("tiny-llama", PRUNE_HALF, tmp_path / "pruned")
    config = json.loads((tmp_path / "pruned" / "config.json").read_text())
    assert manifest["hf_loadable"] and config["architectures"] == ["LlamaForCausalLM"]
    heads = (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"])
    assert heads == (2, 1, 16) and config["intermediate_size"] == 64  # from 4/2 heads, 128
    rebuilt = torchslim.load(tmp_path / "pruned").model.config  # the prune stage replayed
    assert (rebuilt.num_attention_heads, rebuilt.intermediate_size) == (2, 64)
    fresh = load_pruned_artifact(zoo.get("tiny-llama").load(), tmp_path / "pruned")
    assert fresh.model.model.layers[1].mlp.up_proj.out_features == 64  # prefix added back
    _run("tiny-llama", DROP_LAST, tmp_path / "shallow")
    assert json.loads((tmp_path / "shallow" / "config.json").read_text())["num_hidden_layers"] == 1


def test_non_uniform_widths_are_not_hf_loadable_and_get_no_config(tmp_path: Path) -> None:
    out = tmp_path / "artifact"
    manifest = _run("tiny-llama", PRUNE_BUT_LAYER_0, out)
    assert manifest["hf_loadable"] is False
    # the config keeps the full width (not every layer was pruned): the pruned layer differs
    assert "layers.1.mlp" in manifest["hf"]["why"] and "shapes differ" in manifest["hf"]["why"]
    assert not (out / "config.json").exists()  # never a config that builds other shapes
    model = torchslim.load(out)  # torchslim rebuilds it from the manifest
    assert model.model.model.layers[0].mlp.up_proj.out_features == 128
    assert model.model.model.layers[1].mlp.up_proj.out_features == 64


def test_fake_quant_layers_are_not_hf_loadable(tmp_path: Path) -> None:
    manifest = _run("tiny-llama", INT8, tmp_path / "q")
    assert manifest["hf_loadable"] is False and "fake-quant" in manifest["hf"]["why"]
    assert not (tmp_path / "q" / "config.json").exists()
    assert torchslim.load(tmp_path / "q") is not None


def test_a_version_1_artifact_still_loads(tmp_path: Path) -> None:
    out = tmp_path / "artifact"
    manifest = _run("tiny-llama", PRUNE_HALF, out)
    expected = torchslim.load(out)
    # the version-1 layout: the wrapper's weight names, no config.json, no HF fields
    save_tensors(out / "model.safetensors", expected.state_dict())
    (out / "config.json").unlink()
    for key in ("weights_prefix", "hf_loadable", "hf"):
        del manifest[key]
    (out / "manifest.json").write_text(json.dumps({**manifest, "artifact_version": 1}))
    assert "model.lm_head.weight" in load_tensors(out / "model.safetensors")
    inputs = tuple(zoo.get("tiny-llama").example_inputs(2))
    with torch.no_grad():
        torch.testing.assert_close(torchslim.load(out)(*inputs), expected(*inputs))


def test_tokenizer_files_of_a_hf_directory_are_copied(tmp_path: Path) -> None:
    source = tmp_path / "bert"
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64,
    )  # fmt: skip
    transformers.BertModel(config).save_pretrained(source)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *(f"w{i}" for i in range(59))]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    transformers.BertTokenizer(str(tmp_path / "vocab.txt")).save_pretrained(source)
    out = tmp_path / "artifact"
    compress(resolve_model(str(source)), parse_recipe(DROP_LAST), out, FAST)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["hf_loadable"] and "tokenizer.json" in manifest["hf"]["copied_files"]
    assert manifest["hf"]["from_pretrained_kwargs"] == {}  # the source had its pooler
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert tokenizer("w3 w7")["input_ids"] == [2, 8, 12, 3]
    plain = transformers.AutoModel.from_pretrained(out)
    assert plain.config.num_hidden_layers == 1


def test_commands_read_the_hf_directory_artifact(tmp_path: Path) -> None:
    out = tmp_path / "artifact"
    _run("tiny-llama", PRUNE_HALF, out)
    runner = CliRunner()
    evaluated = runner.invoke(app, ["evaluate", str(out), "--json", "--repeats", "3"])
    assert evaluated.exit_code == 0, evaluated.output
    params = json.loads(evaluated.stdout)["params"]
    weights_file = str(out / "model.safetensors")
    weights = runner.invoke(
        app, ["evaluate", "tiny-llama", "--weights", weights_file, "--json", "--repeats", "3"]
    )
    assert weights.exit_code == 0, weights.output
    assert json.loads(weights.stdout)["params"] == params  # the prefix is added back
    again = tmp_path / "again"
    sparsity = ["--method", "magnitude", "--target", "sparsity=0.5", "--repeats", "3"]
    pruned = runner.invoke(app, ["prune", str(out), *sparsity, "--out", str(again)])
    assert pruned.exit_code == 0, pruned.output
    manifest = json.loads((again / "manifest.json").read_text())
    assert manifest["hf_loadable"]  # zeroed weights: the same shapes, still a HF directory
    plain = transformers.AutoModelForCausalLM.from_pretrained(again)
    inputs = tuple(zoo.get("tiny-llama").example_inputs(2))
    with torch.no_grad():
        expected = torchslim.load(again)(*inputs)
    torch.testing.assert_close(_plain_output(plain, inputs), expected, rtol=1e-5, atol=1e-5)


def test_a_failing_hf_write_leaves_no_artifact(tmp_path: Path, monkeypatch) -> None:
    import torchslim._hf_directory as hf

    def fail(*args: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(hf, "write_config", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        _run("tiny-llama", DROP_LAST, tmp_path / "artifact")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no artifact, no staging folder


@pytest.mark.assets
@pytest.mark.slow  # about 30 s: MiniLM measured before and after
def test_minilm_artifact_is_a_sentence_transformers_ready_directory(tmp_path: Path) -> None:
    out = tmp_path / "minilm"
    manifest = _run("minilm", "version: 1\nstages:\n  - step: drop_layers\n    layers: [1, 3, 5]\n",
                    out)  # fmt: skip
    assert manifest["hf_loadable"] and manifest["weights_prefix"] == "encoder."
    assert {"tokenizer.json", "vocab.txt"} <= set(manifest["hf"]["copied_files"])
    plain = transformers.AutoModel.from_pretrained(out)
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    batch = tokenizer(["a small model", "the same words"], return_tensors="pt", padding=True)
    ours = torchslim.load(out)
    with torch.no_grad():
        expected = ours.encoder(**batch).last_hidden_state  # the wrapper's encoder
        torch.testing.assert_close(plain.eval()(**batch).last_hidden_state, expected)
    assert plain.config.num_hidden_layers == 3

"""Every model-taking command takes the same model options, uses each one, or refuses it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from torchslim import zoo
from torchslim.cli import app

FACTORY = "cli_factories:token_net"
TOKENS = ["--input-shape", "1,16", "--input-dtype", "int64", "--vocab-size", "50"]


@pytest.fixture(autouse=True)
def factories_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def run_json(*args: str) -> dict:
    code, stdout, stderr = run(*args, "--json")
    assert code == 0, stderr
    return json.loads(stdout)


def error_of(*args: str) -> str:
    """The one-line error of a refused command (TorchslimError, raised through CliRunner)."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code != 0
    return str(result.exception) if result.exception else result.output


# --- zoo models -------------------------------------------------------------------------------


@pytest.mark.assets
def test_evaluate_uses_weights_of_a_structured_prune_artifact(tmp_path):
    pruned = run_json(
        "prune", "fashion-cnn", "--target", "params=0.5", "--out", tmp_path / "p", "--repeats", 3
    )
    params_after = pruned["after"]["params"]
    weights = tmp_path / "p" / "model.safetensors"
    report = run_json("evaluate", "fashion-cnn", "--weights", weights, "--repeats", 3)
    assert report["params"] == params_after < pruned["before"]["params"]
    assert report["metrics"]["accuracy"] == pytest.approx(pruned["after"]["metrics"]["accuracy"])


def test_weights_that_do_not_exist_are_refused(tmp_path):
    assert "no such file" in error_of("evaluate", "tiny-resnet", "--weights", tmp_path / "no.pt")


def test_weights_that_do_not_fit_name_the_mismatch(tmp_path):
    from safetensors.torch import save_file

    save_file({"foo": torch.zeros(2)}, str(tmp_path / "w.safetensors"))
    message = error_of("evaluate", "tiny-resnet", "--weights", tmp_path / "w.safetensors")
    assert "do not fit the model" in message and "unexpected keys ['foo']" in message


@pytest.mark.parametrize(
    "flags", [["--input-shape", "1,3,8,8"], ["--input-dtype", "int64", "--vocab-size", "5"]]
)
def test_input_options_are_refused_for_zoo_models(flags):
    message = error_of("evaluate", "tiny-resnet", *flags)
    assert f"{flags[0]}" in message and "brings its own inputs" in message


def test_seq_len_is_refused_for_a_model_without_tokens():
    assert "not a text model" in error_of("profile", "tiny-resnet", "--seq-len", "8", "--meta")


def test_seq_len_reaches_a_zoo_text_model():
    report = run_json("profile", "tiny-gpt2", "--seq-len", "12", "--meta")
    assert report["input_shapes"][0] == [1, 12]


# --- user factories with token inputs ---------------------------------------------------------


def test_factory_with_token_inputs_is_profiled_and_evaluated():
    report = run_json("profile", FACTORY, *TOKENS, "--meta")
    assert report["input_shapes"][0] == [1, 16] and report["total"]["macs"] > 0
    evaluated = run_json("evaluate", FACTORY, *TOKENS, "--seq-len", "8", "--repeats", 3)
    assert evaluated["metrics"]["cosine"] == pytest.approx(1.0)  # the original vs itself
    assert evaluated["metrics"]["top1_agreement"] == 1.0


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--input-shape", "1,16", "--input-dtype", "int64"], "pass --vocab-size"),
        (["--input-shape", "1,16", "--vocab-size", "9"], "--vocab-size describes token ids"),
        (["--input-shape", "1,16", "--input-dtype", "float8"], "allowed: float32"),
        (["--input-shape", "1,x"], "expected integers"),
        (["--input-shape", "1,0"], "positive integers"),
    ],
)
def test_bad_input_options_are_one_clear_error(flags, expected):
    assert expected in error_of("evaluate", FACTORY, *flags)


def test_synthetic_inputs_are_said_out_loud():
    code, _, stderr = run("evaluate", FACTORY, *TOKENS, "--repeats", 3)
    assert code == 0 and "no --data given" in stderr and "seeded random" in stderr


# --- --data -----------------------------------------------------------------------------------


def test_npy_data_gives_the_input_shape_and_real_fidelity(tmp_path):
    data = np.random.default_rng(0).random((20, 1, 12, 12), dtype=np.float32)
    np.save(tmp_path / "x.npy", data)
    report = run_json(
        "quantize", "cli_factories:small_cnn", "--data", tmp_path / "x.npy",
        "--scheme", "w4-weight", "--out", tmp_path / "q", "--repeats", 3,
    )  # fmt: skip
    before, after = report["before"]["metrics"], report["after"]["metrics"]
    assert before["cosine"] == pytest.approx(1.0) and before["max_abs_error"] == 0.0
    assert 0.9 < after["cosine"] < 1.0 and after["max_abs_error"] > 0.0  # 4-bit changed it
    assert {"top1_agreement", "kl_divergence", "output_finite"} <= set(after)


def test_image_folder_is_resized_to_the_input(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(6):
        Image.fromarray(np.full((20, 30), i * 40, dtype=np.uint8)).save(folder / f"{i}.png")
    code, _, stderr = run(
        "evaluate", "cli_factories:small_cnn", "--input-shape", "1,1,12,12", "--data", folder,
        "--repeats", 3,
    )  # fmt: skip
    assert code == 0 and "no --data given" not in stderr


def test_user_data_splits_disjointly(tmp_path):
    from torchslim.zoo.options import ModelOptions, resolve_model

    np.save(tmp_path / "x.npy", np.arange(10 * 4, dtype=np.float32).reshape(10, 4))
    entry = resolve_model(FACTORY, ModelOptions(data=tmp_path / "x.npy"))
    calibration = torch.cat([b[0] for b in entry.calibration_batches(8, batch_size=1)])
    evaluation = torch.cat([b[0] for b in entry.eval_batches()])
    seen = {tuple(row.tolist()) for row in calibration}
    assert len(seen) == 8 and not seen & {tuple(row.tolist()) for row in evaluation}


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (np.full((6, 1, 12, 12), np.nan, dtype=np.float32), "NaN/inf"),
        (np.zeros((1, 1, 12, 12), dtype=np.float32), "at least 2 are needed"),
        (np.zeros((6, 3, 12, 12), dtype=np.float32), "has samples of shape (3, 12, 12)"),
    ],
)
def test_bad_data_is_one_clear_error(tmp_path, array, expected):
    np.save(tmp_path / "x.npy", array)
    args = ["cli_factories:small_cnn", "--input-shape", "1,1,12,12", "--data", tmp_path / "x.npy"]
    assert expected in error_of("evaluate", *args)


def test_pickled_npy_is_refused(tmp_path):
    np.save(tmp_path / "x.npy", np.array([{"a": 1}, {"b": 2}], dtype=object), allow_pickle=True)
    message = error_of("evaluate", "cli_factories:small_cnn", "--data", tmp_path / "x.npy")
    assert "not a readable .npy" in message or "not numeric" in message


def save_llama_with_tokenizer(directory: Path, text: str) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator([text], trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    PreTrainedTokenizerFast(tokenizer_object=tokenizer).save_pretrained(directory)
    zoo.get("tiny-llama").load().model.save_pretrained(directory)


def test_text_data_gives_perplexity_of_a_hugging_face_causal_lm(tmp_path):
    text = " ".join(f"word{i % 37} and more{i % 11}" for i in range(400))
    (tmp_path / "book.txt").write_text(text)
    save_llama_with_tokenizer(tmp_path / "llama", text)
    args = ["evaluate", tmp_path / "llama", "--data", tmp_path / "book.txt", "--seq-len", "16"]
    report = run_json(*args, "--repeats", 3)  # windows of 16 tokens cut from the text
    assert report["metrics"]["perplexity"] > 1.0
    assert report["metrics"]["cosine"] == pytest.approx(1.0)
    too_long = error_of(*args[:4], "--seq-len", "5000")
    assert "window(s) of 5000" in too_long and "smaller --seq-len" in too_long


def test_seq_len_reaches_a_hugging_face_llama_directory(tmp_path):
    zoo.get("tiny-llama").load().model.save_pretrained(tmp_path / "llama")
    report = run_json("profile", tmp_path / "llama", "--seq-len", "24", "--meta")
    assert report["input_shapes"][0] == [1, 24]


# --- .pt2 -------------------------------------------------------------------------------------


def test_pt2_is_evaluated_at_its_static_batch_and_refused_by_layer_transforms(tmp_path):
    from cli_factories import small_cnn

    path = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(small_cnn().eval(), (torch.randn(2, 1, 12, 12),)), path)
    report = run_json("evaluate", path, "--repeats", 3)
    assert report["details"]["batch_size"] == 2
    assert report["metrics"]["cosine"] == pytest.approx(1.0)
    for command in (["prune", path], ["quantize", path, "--scheme", "w8-weight"]):
        assert "torch.export program" in error_of(*command, "--out", tmp_path / "o")
    assert not (tmp_path / "o").exists()


# --- prune and quantize flags -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--target", "macs=0"], "removes nothing"),
        (["--target", "sparsity=0"], "removes nothing"),
        (["--target", "macs=0.5", "--scope", "layer"], "--scope applies to unstructured"),
    ],
)
def test_prune_refuses_targets_that_do_nothing_and_unused_flags(tmp_path, flags, expected):
    assert expected in error_of("prune", "tiny-resnet", *flags, "--out", tmp_path / "o")


def test_prune_says_the_sparsity_reached(tmp_path):
    code, stdout, _ = run(
        "prune", "tiny-resnet", "--method", "magnitude", "--target", "sparsity=0.6",
        "--out", tmp_path / "o", "--repeats", 3,
    )  # fmt: skip
    assert code == 0 and "sparsity reached: 60." in stdout


def test_quantize_refuses_a_gpu_for_cpu_runtimes(tmp_path):
    message = error_of("quantize", "tiny-resnet", "--device", "cuda", "--out", tmp_path / "o")
    assert "deploys to CPU runtimes" in message or "CUDA" in message

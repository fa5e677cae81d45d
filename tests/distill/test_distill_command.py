"""``torchslim distill`` end to end on a tiny zoo model (seconds, no assets)."""

import json

from typer.testing import CliRunner

import torchslim
from torchslim._outdir import RECORD  # the artifact's record of its files
from torchslim.cli import app
from torchslim.errors import ConfigError


def test_distill_command_drops_layers_trains_and_reports_before_after(tmp_path):
    out = tmp_path / "student"
    result = CliRunner().invoke(
        app,
        ["distill", "--teacher", "tiny-bert", "--student-from", "tiny-bert", "--drop-layers", "1",
         "--epochs", "2", "--train-batch-size", "8", "--lr", "0.001", "--optimizer", "adamw",
         "--amp", "off", "--out", str(out), "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output[result.output.index("{") :])
    assert payload["model"] == "tiny-bert" and payload["technique"] == "distill"
    assert payload["after"]["params"] < payload["before"]["params"]
    assert payload["before"]["metrics"]["cosine_vs_reference"] > 0.999  # before = the teacher
    details = payload["details"]
    assert list(details["student_from_teacher"].values()) == [{"layers": 2, "kept": [0]}]
    assert details["distill_config"]["output_loss"] == "mse"  # no labels: teacher outputs
    assert details["steps"] == 8  # 32 calibration examples / 8 per step x 2 epochs
    names = sorted(p.name for p in out.iterdir())
    # a Hugging Face directory: the config says the new depth (the student is a BertModel)
    assert names == [RECORD, "config.json", "manifest.json", "metrics.jsonl", "model.safetensors"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["outcome"]["after"]["params"] == payload["after"]["params"]
    assert [stage["step"] for stage in manifest["stages"]] == ["drop_layers", "distill"]
    student = torchslim.load(out)  # the teacher rebuilt, layers dropped, the student's weights
    assert sum(p.numel() for p in student.parameters()) == payload["after"]["params"]
    evaluated = CliRunner().invoke(app, ["evaluate", str(out), "--json", "--repeats", "3"])
    assert json.loads(evaluated.stdout)["metrics"] == payload["after"]["metrics"]


def test_distill_command_refuses_a_student_from_another_model(tmp_path):
    result = CliRunner().invoke(
        app,
        ["distill", "--teacher", "tiny-bert", "--student-from", "tiny-gpt2", "--out",
         str(tmp_path)],
    )  # fmt: skip
    assert isinstance(result.exception, ConfigError)
    assert "must be the teacher" in str(result.exception)

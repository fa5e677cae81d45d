"""``torchslim factorize``: a Tucker-2 run writes an artifact that loads; contradictory rank
options are refused before any work."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

import torchslim
from torchslim.cli import app


def test_tucker2_from_the_command_line_writes_a_loadable_artifact(tmp_path: Path) -> None:
    out = tmp_path / "lr"
    args = ["factorize", "tiny-resnet8", "--method", "tucker2", "--rank", "2",
            "--ignore", "conv1", "--out", str(out), "--no-check-speed", "--json"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    stage = payload["details"]["stages"][0]["summary"]
    assert stage["method"] == "tucker2" and stage["layers_factorized"] >= 1
    assert payload["after"]["params"] < payload["before"]["params"]
    torchslim.load(out)


def test_rank_and_energy_together_are_refused(tmp_path: Path) -> None:
    args = ["factorize", "tiny-cnn", "--rank", "2", "--energy", "0.9", "--out", str(tmp_path / "x")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0
    assert "give one of rank, energy, target" in str(result.exception or result.output)
    assert not (tmp_path / "x").exists()

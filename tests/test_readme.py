"""The README's examples run as written: every Python block, and every `torchslim` command."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from torchslim.cli import app

README = Path(__file__).parents[1] / "README.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), re.S)


def commands() -> list[str]:
    lines = [line.split("#")[0].strip() for block in blocks("bash") for line in block.splitlines()]
    return [line for line in lines if line.startswith("torchslim ")]


# Blocks that evaluate a zoo model on its whole test set (13-18 s each on one core): make test-slow.
WHOLE_TEST_SET = re.compile(r"entry\.evaluate\(model\)|report\.metrics")


def python_blocks() -> list[object]:
    return [
        pytest.param(code, marks=pytest.mark.slow) if WHOLE_TEST_SET.search(code) else code
        for code in blocks("python")
    ]


@pytest.mark.assets
@pytest.mark.parametrize("code", python_blocks(), ids=lambda code: str(code).splitlines()[-1][:40])
def test_python_block_runs_as_written(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(README), "exec"), {"__name__": "readme"})


@pytest.mark.assets
@pytest.mark.slow  # about 2 min on one core: every README command, in order (make test-slow)
def test_command_line_examples_run_in_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # artifacts land here; later commands read earlier ones
    assert commands(), "the README shows no torchslim command"
    for command in commands():
        args = shlex.split(command)[1:]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, f"{command}\n{result.output}\n{result.exception!r}"

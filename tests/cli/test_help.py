"""Every command's help shows one example, and the top-level help is cheap (no torch import)."""

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from torchslim.cli import app

COMMANDS = [
    ["zoo", "list"], ["fetch"], ["train"], ["evaluate"], ["demo"], ["hw"], ["profile"],
    ["prune"], ["quantize"], ["distill"], ["compress"], ["recipe", "list"], ["recipe", "steps"],
    ["recipe", "validate"], ["factorize"], ["generate"],
]  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_help_has_an_example(command):
    result = CliRunner().invoke(app, [*command, "--help"], terminal_width=200)
    assert result.exit_code == 0
    assert f"Example: torchslim {' '.join(command)}" in " ".join(result.output.split())


def test_top_level_help_does_not_import_torch():
    probe = (
        "import sys, runpy; sys.argv = ['torchslim', '--help']\n"
        "try:\n    runpy.run_module('torchslim', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert "quantize" in result.stdout and result.stdout.strip().endswith("NO-TORCH")

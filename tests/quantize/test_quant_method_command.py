"""``torchslim quantize --method rtn|gptq|awq`` on a tiny LLaMA: method in the JSON, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from torchslim.cli import app


def _invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["quantize", "tiny-llama", *args, "--repeats", "3"])
    return result.exit_code, result.stdout, f"{result.output}{result.exception or ''}"


@pytest.mark.parametrize("method", ["rtn", "gptq", "awq"])
def test_method_runs_and_is_recorded(method: str, tmp_path: Path) -> None:
    out = tmp_path / method
    code, stdout, output = _invoke(
        "--scheme", "w4-weight", "--weight-format", "int4-g16", "--method", method,
        "--calibration-batches", "2", "--out", str(out), "--json",
    )  # fmt: skip
    assert code == 0, output
    report = json.loads(stdout)
    details = report["details"]
    assert details["method"]["method"] == method
    if method != "rtn":
        assert details["method"]["loss_ratio_vs_rtn_median"] <= 1.0  # never worse on its data
    assert report["after"]["metrics"]["cosine_vs_reference"] > 0.9
    manifest = json.loads((out / "manifest.json").read_text())  # the one artifact format
    assert manifest["outcome"]["details"]["method"]["method"] == method
    assert manifest["stages"][0]["options"]["method"] == method


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--scheme", "w8a8", "--method", "gptq"), "static input ranges (uint8)"),
        (("--scheme", "ternary", "--method", "awq"), "int weight scheme"),
        (("--scheme", "w4-weight", "--method", "gtpq"), "Did you mean"),
    ],
)
def test_method_is_refused_where_it_has_no_meaning(
    args: tuple[str, ...], message: str, tmp_path: Path
) -> None:
    code, _, output = _invoke(*args, "--out", str(tmp_path / "x"))
    assert code != 0
    assert message in output
    assert not (tmp_path / "x").exists()

"""A real search on a tiny zoo CNN (in process, fp32 candidates): what it leaves in --out, the
report in a real headless Chromium, and the command line's modes."""

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from torchslim import load
from torchslim.cli import app
from torchslim.errors import OutputDirectoryError
from torchslim.search import SearchConfig, search, write_report
from torchslim.search._sections import sensitivity_section
from torchslim.search.directory import check_search_directory
from torchslim.search.roofline import ROOFLINE_FILE, placed, slowest
from torchslim.search.run import _load_state
from torchslim.zoo.options import resolve_model

RESULTS = Path(__file__).parents[2] / "benchmarks" / "results"
CONFIG = SearchConfig(
    max_drop=1.0, generation=2, max_trials=4, threads=1, repeats=5, formats=("fp32",)
)


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("search") / "out"
    search(resolve_model("tiny-cnn"), CONFIG, out)
    return out


def test_search_leaves_every_trial_the_front_and_a_loadable_best(searched: Path) -> None:
    state = json.loads((searched / "search.json").read_text())
    trials = state["trials"]
    assert [t["number"] for t in trials] == [0, 1, 2, 3]
    assert state["stopped"] == "trials"
    measured = [t for t in trials if t["state"] == "complete"]
    assert measured and set(state["front"]) <= {t["number"] for t in measured}
    for trial in measured:  # every figure measured, the ratios consistent with them
        assert trial["latency_ms"] > 0 and trial["size_bytes"] > 0
        assert trial["latency_ratio"] == pytest.approx(
            trial["latency_ms"] / state["baseline"]["latency_ms"]
        )
        assert trial["macs"] <= state["baseline"]["macs"]
        assert (searched / "trials" / f"{trial['number']:04d}" / "manifest.json").is_file()
    best = next(t for t in trials if t["number"] == state["best"])
    assert best["feasible"]
    assert all(best["latency_ms"] <= t["latency_ms"] for t in measured if t["feasible"])
    model = load(searched / "best")  # the chosen model, rebuilt from its artifact
    assert sum(p.numel() for p in model.parameters()) == best["params"]
    assert (searched / "best" / "recipe.yaml").is_file()


def test_report_in_headless_chromium(searched: Path, tmp_path: Path) -> None:
    from browser import Page

    if shutil.which("chromium") is None:
        pytest.fail("Debian's chromium is missing: run make setup (it installs it)")
    state = json.loads((searched / "search.json").read_text())
    page = Page(searched / "report.html", tmp_path / "profile")
    try:
        assert page.errors == []
        measured = sum(t["state"] == "complete" for t in state["trials"])
        for plot in ("plot-latency", "plot-size", "plot-latency-size"):
            circles = page.evaluate(f"document.querySelectorAll('#{plot} circle').length")
            assert circles == measured + 1  # every measured trial and the original
            box = page.evaluate(f"document.getElementById('{plot}').getBoundingClientRect().width")
            assert box > 100  # drawn, not collapsed
        table = page.evaluate("document.getElementById('trials').innerText")
        for trial in state["trials"]:
            if trial["state"] == "complete":
                assert f"{trial['latency_ms']:.3f}" in table
        before_after = page.evaluate("document.getElementById('before-after').innerText")
        assert f"{state['baseline']['latency_ms']:.3f}" in before_after
        layers = page.evaluate("document.getElementById('layers').innerText")
        best = next(t for t in state["trials"] if t["number"] == state["best"])
        if best["choices"]["keep_macs"] < 1.0:  # a pruned choice: its narrowed layers listed
            assert "%" in layers
        _check_roofline_and_sensitivity(page, searched, state)
        shot = page.screenshot(tmp_path / "report.png")
    finally:
        page.close()
    assert shot.stat().st_size > 10_000
    RESULTS.mkdir(exist_ok=True)
    shutil.copy(shot, RESULTS / "search_report_tiny_cnn.png")


def _check_roofline_and_sensitivity(page: Any, out: Path, state: dict[str, Any]) -> None:
    """Both rooflines drawn with their roofs and one dot per placed op; one bar per layer."""
    chosen = json.loads((out / "best" / ROOFLINE_FILE).read_text())
    for key, data in (("original", state["baseline"]["roofline"]), ("chosen", chosen)):
        for roof in ("roof-memory", "roof-compute"):
            assert (
                page.evaluate(f"document.querySelectorAll('#roofline-{key} .{roof}').length") == 1
            )
        dots = page.evaluate(f"document.querySelectorAll('#roofline-{key} circle.op').length")
        assert dots == len(placed(data["rows"])) > 0
        table = page.evaluate(f"document.getElementById('roofline-top-{key}').innerText")
        assert f"{slowest(data['rows'])[0]['measured_s'] * 1e3:.3f}" in table
    scan = state["sensitivity"]
    assert scan["state"] == "scanned" and scan["layers"]
    bars = page.evaluate("document.querySelectorAll('#plot-sensitivity rect.bar').length")
    assert bars == len(scan["layers"])
    table = page.evaluate("document.getElementById('sensitivity').innerText")
    assert all(f"{layer['drop']:.4f}" in table for layer in scan["layers"])


def test_state_round_trips_and_a_resumed_search_keeps_its_scan_and_roofline(
    searched: Path, tmp_path: Path
) -> None:
    out = tmp_path / "copy"
    shutil.copytree(searched, out)
    written = json.loads((out / "search.json").read_text())
    loaded = _load_state(out)
    assert loaded is not None
    assert loaded["sensitivity"] == written["sensitivity"]
    assert loaded["baseline"]["roofline"] == written["baseline"]["roofline"]
    state = search(resolve_model("tiny-cnn"), CONFIG, out, resume=True)  # no trial left to run
    assert state.sensitivity == written["sensitivity"]  # not scanned again
    again = json.loads((out / "search.json").read_text())
    assert again["baseline"]["roofline"] == written["baseline"]["roofline"]
    assert again["trials"] == written["trials"]


def test_report_of_a_deployed_best_says_which_module_its_roofline_is_of(
    searched: Path, tmp_path: Path
) -> None:
    out = tmp_path / "deployed"
    shutil.copytree(searched, out)
    manifest_file = out / "best" / "manifest.json"
    manifest = {**json.loads(manifest_file.read_text()), "kind": "deployed", "backend": "openvino"}
    manifest_file.write_text(json.dumps(manifest))
    roofline_file = out / "best" / ROOFLINE_FILE
    chosen = json.loads(roofline_file.read_text())
    roofline_file.write_text(json.dumps({**chosen, "note": "its float module before deploy"}))
    note, dots = _chosen_roofline(out, tmp_path / "profile-a")
    assert "deployed runtime (openvino)" in note and "before deploy" in note
    assert dots == len(placed(chosen["rows"]))
    roofline_file.unlink()  # a runtime without its float module's roofline: said so, no plot
    note, dots = _chosen_roofline(out, tmp_path / "profile-b")
    assert "No roofline of the chosen model" in note and "cannot see into" in note
    assert dots is None


def _chosen_roofline(out: Path, profile: Path) -> tuple[str, int | None]:
    """The report rewritten and opened: the chosen roofline's note and its dots (None: no
    plot); the original's roofline is drawn either way."""
    from browser import Page

    write_report(out)
    page = Page(out / "report.html", profile)
    try:
        assert page.errors == []
        assert page.evaluate("document.querySelectorAll('#roofline-original circle.op').length")
        note = page.evaluate("document.getElementById('roofline-chosen-note').innerText")
        plot = "document.getElementById('roofline-chosen')"
        dots = page.evaluate(f"{plot} && {plot}.querySelectorAll('circle.op').length")
    finally:
        page.close()
    return note, dots


@pytest.mark.slow
def test_a_real_int8_runtime_best_renders_its_pre_deploy_roofline(tmp_path: Path) -> None:
    from browser import Page

    config = SearchConfig(max_drop=100.0, generation=1, max_trials=1, threads=1, repeats=5,
                          formats=("int8",))  # fmt: skip
    out = tmp_path / "out"
    state = search(resolve_model("tiny-cnn"), config, out)
    assert state.best() is not None
    assert json.loads((out / "best" / "manifest.json").read_text())["kind"] == "deployed"
    chosen = json.loads((out / "best" / ROOFLINE_FILE).read_text())
    assert chosen["note"] == "its float module before deploy"
    page = Page(out / "report.html", tmp_path / "profile")
    try:
        assert page.errors == []
        note = page.evaluate("document.getElementById('roofline-chosen-note').innerText")
        assert "deployed runtime" in note
        dots = page.evaluate("document.querySelectorAll('#roofline-chosen circle.op').length")
        assert dots == len(placed(chosen["rows"]))
    finally:
        page.close()


def test_a_search_discards_by_the_scan_before_measuring(tmp_path: Path) -> None:
    import optuna

    config = SearchConfig(max_drop=0.1, generation=2, max_trials=4, threads=1, repeats=3,
                          formats=("fp32",))  # fmt: skip
    state = search(resolve_model("tiny-cnn"), config, tmp_path / "out")
    by_scan = [r for r in state.records if "sensitivity scan" in r.get("reason", "")]
    assert by_scan and all(r["state"] == "discarded" for r in by_scan)
    for record in by_scan:  # never built: no artifact, told to the study as pruned
        assert not (tmp_path / "out" / "trials" / f"{record['number']:04d}").exists()
    study = optuna.load_study(study_name="torchslim-search",
                              storage=f"sqlite:///{tmp_path / 'out' / 'study.db'}")  # fmt: skip
    pruned = {t.number for t in study.trials if t.state == optuna.trial.TrialState.PRUNED}
    assert {r["number"] for r in by_scan} <= pruned
    page = (tmp_path / "out" / "report.html").read_text()
    assert f"budget): {len(by_scan)}." in page


def test_report_of_a_search_from_before_scans_and_rooflines_says_they_are_missing(
    searched: Path, tmp_path: Path
) -> None:
    out = tmp_path / "older"
    shutil.copytree(searched, out)
    state = json.loads((out / "search.json").read_text())
    del state["sensitivity"], state["baseline"]["roofline"]
    (out / "search.json").write_text(json.dumps(state))
    (out / "best" / ROOFLINE_FILE).unlink()
    page = write_report(out).read_text()
    assert "did not record the original's roofline" in page
    assert "did not record a sensitivity scan" in page
    assert '<svg id="plot-latency"' in page  # the rest of the report as before


def test_the_scan_is_skipped_with_its_reason_when_the_budget_is_tiny() -> None:
    from torchslim.search.metric import metric_of
    from torchslim.search.sensitivity import scan_layers

    entry = resolve_model("tiny-cnn")
    config = SearchConfig(max_drop=1.0, budget_seconds=10.0)
    metric = metric_of(list(entry.metric_names()))
    scan = scan_layers(entry, entry.load(), metric, {"evaluate_seconds": 2.0}, config, 1)
    assert scan["state"] == "skipped" and scan["layers"] == []
    assert "more than 10% of the 10 s budget" in scan["reason"]
    state = {"sensitivity": scan, "config": config.to_dict(), "metric": {"name": metric.name}}
    assert "Not scanned: the scan would take about" in sensitivity_section(state)


def test_command_line_modes_are_exclusive(tmp_path: Path) -> None:
    runner = CliRunner()
    cases = [
        (["compress", "tiny-cnn", "--out", str(tmp_path / "a")], "--max-drop"),
        (
            [
                "compress",
                "tiny-cnn",
                "--recipe",
                "quick-sparse-w8",
                "--max-drop",
                "1",
                "--out",
                str(tmp_path / "b"),
            ],
            "belong to search mode",
        ),
        (
            [
                "compress",
                "tiny-cnn",
                "--max-drop",
                "1",
                "--batch-size",
                "4",
                "--out",
                str(tmp_path / "c"),
            ],
            "--batch-size",
        ),
        (
            [
                "compress",
                "tiny-cnn",
                "--max-drop",
                "1",
                "--target",
                "size=0.5",
                "--out",
                str(tmp_path / "d"),
            ],
            "--target latency=RATIO",
        ),
    ]
    for arguments, message in cases:
        result = runner.invoke(app, arguments)
        assert result.exit_code != 0
        assert message in result.output.replace("\n", " ") or message in str(result.exception)
        assert not (tmp_path / arguments[-1]).exists()


def test_out_holding_user_files_is_refused_before_any_work(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputDirectoryError, match=r"notes\.txt"):
        check_search_directory(out, resume=False, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"


def test_report_of_a_folder_without_search_is_one_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code != 0
    assert "holds no search" in result.output.replace("\n", " ") + str(result.exception)


def test_search_stops_when_the_target_is_reached(tmp_path: Path) -> None:
    config = SearchConfig(max_drop=1.0, objective="size", target_ratio=1.0, generation=2,
                          max_trials=10, threads=1, repeats=3, formats=("fp32",))  # fmt: skip
    state = search(resolve_model("tiny-cnn"), config, tmp_path / "out")
    assert state.stopped == "goal met"
    assert len(state.records) == 2  # one generation: every pruned fp32 model is smaller
    best = state.best()
    assert best is not None and best["size_ratio"] <= 1.0
    assert (tmp_path / "out" / "report.html").is_file()
    assert (tmp_path / "out" / "best" / "manifest.json").is_file()

"""``report.html``: one self-contained page (inline CSS and SVG, no script, no network) of a
search: the original beside the chosen model, the Pareto front, every trial, both models on this
machine's roofline, the per-layer sensitivity scan, the chosen model's stages and the recipe that
reproduces it. It draws what the search stored (``search.json``, ``best/``): no model is run."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Any

import yaml

from torchslim.errors import ConfigError
from torchslim.evaluate.report import format_bytes
from torchslim.search._sections import roofline_section, sensitivity_section
from torchslim.search._svg import Point, legend, scatter
from torchslim.search.roofline import ROOFLINE_FILE

REPORT = "report.html"
_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1500px;color:#222}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:right}th{background:#f2f2f2}td.text{text-align:left}.plots{display:flex;
flex-wrap:wrap;gap:1em}pre{background:#f6f6f6;padding:1em}.key{margin-right:1em}
tr.chosen{background:#fde2e2}tr.front{background:#fff2e0}h3{font-size:1em;margin:.4em 0}
p.note{font-size:.9em;color:#555;max-width:700px}
"""


def write_report(out: str | Path) -> Path:
    """Write ``out/report.html`` from the search in ``out``; its path.

    Raises:
        ConfigError: ``out`` holds no search (no ``search.json``).
    """
    out = Path(out)
    state_file = out / "search.json"
    if not state_file.is_file():
        raise ConfigError(
            f"{out} holds no search (no search.json): give the --out of torchslim compress "
            "MODEL --max-drop ..."
        )
    state = json.loads(state_file.read_text())
    manifest_file = out / "best" / "manifest.json"
    manifest = json.loads(manifest_file.read_text()) if manifest_file.is_file() else None
    roofline_file = out / "best" / ROOFLINE_FILE
    chosen = json.loads(roofline_file.read_text()) if roofline_file.is_file() else None
    path = out / REPORT
    path.write_text(render(state, manifest, chosen))
    return path


def render(
    state: dict[str, Any], manifest: dict[str, Any] | None, chosen: dict[str, Any] | None = None
) -> str:
    """The page's HTML; ``chosen``: the chosen model's roofline (``best/roofline.json``)."""
    trials = state["trials"]
    best = next((t for t in trials if t["number"] == state["best"]), None)
    config, metric = state["config"], state["metric"]["name"]
    cpu = state.get("machine", {}).get("cpu_model", "unknown CPU")
    title = f"torchslim search: {state['model'].get('spec', '?')}"
    summary = (
        f"objective: <b>{config['objective']}</b>; metric <b>{escape(metric)}</b> may drop "
        f"at most {config['max_drop']:g}; {len(trials)} trials; stopped: "
        f"<b>{escape(state['stopped'])}</b>; {escape(state['workers'])}, "
        f"{state['threads_per_trial']} thread(s) per trial; {escape(str(cpu))}"
    )
    sections = [
        f"<h1>{escape(title)}</h1><p id='summary'>{summary}</p>",
        "<h2>Original and chosen model</h2>" + _before_after(state, best, metric),
        "<h2>Pareto front</h2>" + _plots(state) + _front_note(state),
        "<h2>Trials</h2>" + _trials_table(state),
        "<h2>Roofline: original and chosen model</h2>" + roofline_section(state, chosen, manifest),
        "<h2>Per-layer sensitivity</h2>" + sensitivity_section(state),
        "<h2>Stages of the chosen model</h2>" + _stages(manifest),
        "<h2>Per layer: widths kept</h2>" + _layers(state, manifest),
        "<h2>Recipe that reproduces it</h2>" + _recipe(state, best),
    ]
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{escape(title)}"
        f"</title><style>{_CSS}</style></head><body>{''.join(sections)}</body></html>\n"
    )


def _before_after(state: dict[str, Any], best: dict[str, Any] | None, metric: str) -> str:
    base = state["baseline"]
    if best is None:
        return "<p id='no-best'>No trial is within the accuracy budget yet.</p>"
    rows = [
        (metric, f"{base['metric']:.4f}", f"{best['metric']:.4f}", f"drop {best['drop']:.3f}"),
        (
            "latency median (ms, batch 1)",
            f"{base['latency_ms']:.3f}",
            f"{best['latency_ms']:.3f}",
            f"{base['latency_ms'] / best['latency_ms']:.2f}× faster",
        ),
        (
            "size on disk",
            format_bytes(base["size_bytes"]),
            format_bytes(best["size_bytes"]),
            f"{base['size_bytes'] / best['size_bytes']:.2f}× smaller",
        ),
        (
            "MACs (batch 1)",
            f"{base['macs']:,}",
            f"{best['macs']:,}",
            f"{best['macs'] / base['macs']:.0%}",
        ),
        (
            "parameters",
            f"{base['params']:,}",
            f"{best['params']:,}",
            f"{best['params'] / base['params']:.0%}",
        ),
    ]
    body = "".join(
        f"<tr><td class='text'>{escape(n)}</td><td>{a}</td><td>{b}</td><td>{r}</td></tr>"
        for n, a, b, r in rows
    )
    head = (
        f"<tr><th>measure</th><th>original</th><th>chosen (trial {best['number']}: "
        f"{escape(best['description'])})</th><th>change</th></tr>"
    )
    return f"<table id='before-after'>{head}{body}</table>"


def _points(state: dict[str, Any], x: str, y: str) -> list[Point]:
    front = set(state["front"])
    points = []
    for trial in state["trials"]:
        if trial["state"] != "complete":
            continue
        role = "trial" if not trial["feasible"] else "feasible"
        role = "front" if trial["number"] in front and trial["feasible"] else role
        role = "chosen" if trial["number"] == state["best"] else role
        label = (
            f"trial {trial['number']}: {trial['description']}; drop {trial['drop']:.3f}, "
            f"{trial['latency_ms']:.3f} ms, {format_bytes(trial['size_bytes'])}"
        )
        points.append(Point(_value(trial, x), _value(trial, y), label, role))
    base = state["baseline"]
    points.append(
        Point(
            _value({**base, "drop": 0.0}, x),
            _value({**base, "drop": 0.0}, y),
            "original model",
            "original",
        )
    )
    return points


def _value(row: dict[str, Any], key: str) -> float:
    return float(row[key]) / 1024 if key == "size_bytes" else float(row[key])


def _plots(state: dict[str, Any]) -> str:
    pairs = [
        ("latency_ms", "drop", "latency (ms)", "metric drop", "plot-latency"),
        ("size_bytes", "drop", "size (KiB)", "metric drop", "plot-size"),
        ("latency_ms", "size_bytes", "latency (ms)", "size (KiB)", "plot-latency-size"),
    ]
    plots = [scatter(_points(state, x, y), xt, yt, pid) for x, y, xt, yt, pid in pairs]
    return legend() + "<div class='plots'>" + "".join(plots) + "</div>"


def _front_note(state: dict[str, Any]) -> str:
    feasible = [n for n in state["front"] if _trial(state, n)["feasible"]]
    return (
        f"<p id='front-size'>{len(state['front'])} trials on the front (drop, latency, size "
        f"all minimised), {len(feasible)} of them within the budget.</p>"
    )


def _trial(state: dict[str, Any], number: int) -> dict[str, Any]:
    return next(t for t in state["trials"] if t["number"] == number)


def _trials_table(state: dict[str, Any]) -> str:
    head = (
        "<tr><th>trial</th><th>candidate</th><th>state</th><th>metric</th><th>drop</th>"
        "<th>latency ms</th><th>size</th><th>MACs</th><th>seconds</th></tr>"
    )
    rows = []
    front = set(state["front"])
    for t in state["trials"]:
        css = "chosen" if t["number"] == state["best"] else "front" if t["number"] in front else ""
        if t["state"] == "complete":
            cells = (
                f"<td>{t['metric']:.4f}</td><td>{t['drop']:.3f}</td>"
                f"<td>{t['latency_ms']:.3f}</td><td>{format_bytes(t['size_bytes'])}</td>"
                f"<td>{t['macs']:,}</td>"
            )
        else:
            why = t.get("reason") or t.get("error", "")
            cells = f"<td class='text' colspan='5'>{escape(why)}</td>"
        rows.append(
            f"<tr class='{css}'><td>{t['number']}</td><td class='text'>"
            f"{escape(t['description'])}</td><td class='text'>{t['state']}</td>{cells}"
            f"<td>{t.get('seconds') or 0:.0f}</td></tr>"
        )
    return f"<table id='trials'>{head}{''.join(rows)}</table>"


def _stages(manifest: dict[str, Any] | None) -> str:
    if manifest is None:
        return "<p>No chosen model yet.</p>"
    stages = manifest.get("stages", [])
    if not stages:
        return "<p id='stages'>The original model itself (no stage) was the best candidate.</p>"
    rows = []
    for stage in stages:
        summary = json.dumps(stage.get("summary", {}), default=str)
        summary = summary if len(summary) < 400 else summary[:400] + "…"
        rows.append(
            f"<tr><td class='text'>{escape(stage['step'])}</td><td>{stage['seconds']:.1f}"
            f"</td><td class='text'><code>{escape(summary)}</code></td></tr>"
        )
    head = "<tr><th>stage</th><th>seconds</th><th>what it did</th></tr>"
    return f"<table id='stages'>{head}{''.join(rows)}</table>"


def _layers(state: dict[str, Any], manifest: dict[str, Any] | None) -> str:
    """Each resized conv/linear layer of the chosen model: its weight before and after."""
    original = state["baseline"].get("layer_shapes")
    if original is None:
        return "<p id='layers'>This search did not record the original's layer shapes.</p>"
    resized = (manifest or {}).get("pruned_shapes", {})
    rows = []
    for name, shape in original.items():
        after = resized.get(name, {}).get("tensors", {}).get("weight")
        if after is None or after == shape:
            continue
        kept = _count(after) / _count(shape)
        rows.append(f"<tr><td class='text'>{escape(name)}</td><td>{shape}</td><td>{after}</td>"
                    f"<td>{kept:.0%}</td></tr>")  # fmt: skip
    if not rows:
        return "<p id='layers'>No layer of the chosen model was narrowed.</p>"
    head = "<tr><th>layer</th><th>weight before</th><th>weight after</th><th>kept</th></tr>"
    return f"<table id='layers'>{head}{''.join(rows)}</table>"


def _count(shape: list[int]) -> int:
    total = 1
    for size in shape:
        total *= size
    return total


def _recipe(state: dict[str, Any], best: dict[str, Any] | None) -> str:
    if best is None:
        return "<p>No chosen model yet.</p>"
    text = yaml.safe_dump(best["recipe"], sort_keys=False)
    spec = state["model"].get("spec", "MODEL")
    command = f"torchslim compress {spec} --recipe best/recipe.yaml --out result"
    return (
        f"<pre id='recipe'>{escape(text)}</pre><p>Run it again: <code>{escape(command)}</code></p>"
    )

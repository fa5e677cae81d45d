"""The report's measured-on-this-machine sections: the roofline of the original and of the
chosen model, and the per-layer sensitivity scan. Both draw stored data only."""

from __future__ import annotations

from html import escape
from typing import Any

from torchslim.evaluate.report import format_bytes
from torchslim.search._svg import Point, Roofs, bars, roofline
from torchslim.search.roofline import placed, slowest


def roofline_section(
    state: dict[str, Any], chosen: dict[str, Any] | None, manifest: dict[str, Any] | None
) -> str:
    """Both models on this machine's roofline (shared axes) and their slowest ops."""
    original = state["baseline"].get("roofline")
    if original is None:
        return "<p id='roofline-missing'>This search did not record the original's roofline.</p>"
    models = [("original", "original", original)]
    if chosen is not None:
        models.append(("chosen", f"chosen (trial {state['best']})", chosen))
    roofs = _roofs(original["hardware"], [m[2] for m in models])
    plots, tables = [], []
    for key, title, data in models:
        plot = roofline(_op_points(data), roofs, f"roofline-{key}")
        plots.append(f"<div><h3>{escape(title)}</h3>{plot}</div>")
        tables.append(f"<div><h3>{escape(title)}: slowest ops</h3>{_top_ops(data, key)}</div>")
    return (
        _hardware_note(original, state)
        + _chosen_note(state, chosen, manifest)
        + f"<div class='plots'>{''.join(plots)}</div><div class='plots'>{''.join(tables)}</div>"
    )


def _roofs(hardware: dict[str, Any], models: list[dict[str, Any]]) -> Roofs:
    peaks = hardware["peak_flops_per_s"]
    peak = float(peaks.get("float32") or max(peaks.values()))
    bandwidth = float(hardware["mem_bw_bytes_per_s"])
    rows = [row for data in models for row in placed(data["rows"])]
    xs = [row["arithmetic_intensity"] for row in rows] + [peak / bandwidth]
    ys = [row["achieved_flops_per_s"] for row in rows] + [peak]
    return Roofs(bandwidth, peak, (min(xs) / 3, max(xs) * 3), (min(ys) / 3, peak * 3))


def _op_points(data: dict[str, Any]) -> list[Point]:
    """One point per placed op, slowest first (the first few are labelled)."""
    total = data["measured_s"] or 1.0
    rows = sorted(placed(data["rows"]), key=lambda row: -row["measured_s"])
    return [
        Point(
            row["arithmetic_intensity"],
            row["achieved_flops_per_s"],
            f"{row['op']}: {row['arithmetic_intensity']:.2f} FLOP/byte, "
            f"{row['achieved_flops_per_s'] / 1e9:.3g} GFLOP/s achieved, "
            f"{row['measured_s'] * 1e3:.3f} ms ({row['measured_s'] / total:.0%} of the time), "
            f"{row['bound']}-bound",
            row["bound"],
        )
        for row in rows
    ]


def _top_ops(data: dict[str, Any], key: str) -> str:
    total = data["measured_s"] or 1.0
    head = (
        "<tr><th>op</th><th>calls</th><th>FLOPs</th><th>bytes</th><th>FLOP/byte</th>"
        "<th>bound</th><th>measured ms</th><th>share</th><th>of its roof</th></tr>"
    )
    rows = []
    for row in slowest(data["rows"]):
        attainable = row["flops"] / row["roofline_s"] if row["roofline_s"] else 0.0
        achieved = row["achieved_flops_per_s"] or 0.0
        share = f"{achieved / attainable:.0%}" if attainable and achieved else "-"
        rows.append(
            f"<tr><td class='text'>{escape(row['op'])}</td><td>{row['calls']}</td>"
            f"<td>{row['flops']:,}</td><td>{format_bytes(row['bytes'])}</td>"
            f"<td>{row['arithmetic_intensity']:.2f}</td><td class='text'>{row['bound']}</td>"
            f"<td>{row['measured_s'] * 1e3:.3f}</td><td>{row['measured_s'] / total:.0%}</td>"
            f"<td>{share}</td></tr>"
        )
    left_out = [r["op"] for r in data["rows"] if r not in placed(data["rows"])]
    note = (
        f"<p class='note'>Not on the plot (no FLOPs, no bytes or no measured time): "
        f"{escape(', '.join(left_out))}.</p>"
        if left_out
        else ""
    )
    return f"<table id='roofline-top-{key}'>{head}{''.join(rows)}</table>{note}"


def _hardware_note(original: dict[str, Any], state: dict[str, Any]) -> str:
    hardware = original["hardware"]
    peak = hardware["peak_flops_per_s"].get("float32", 0.0)
    bandwidth = hardware["mem_bw_bytes_per_s"]
    return (
        f"<p id='roofline-hardware'>Roofs of {escape(str(hardware['name']))}: float32 peak "
        f"{peak / 1e9:.1f} GFLOP/s, memory {bandwidth / 1e9:.1f} GB/s (ridge "
        f"{peak / bandwidth:.1f} FLOP/byte), {escape(str(hardware['source']))}. Each op: its "
        f"FLOPs (2 × MAC) and bytes counted, its time measured by torch.profiler over one "
        f"forward pass at batch 1 with {state['threads_per_trial']} thread(s). The memory roof is "
        "measured on a buffer far larger than the caches: an op whose data stays in cache can "
        "run above it (over 100 % of its roof).</p>"
    )


def _chosen_note(
    state: dict[str, Any], chosen: dict[str, Any] | None, manifest: dict[str, Any] | None
) -> str:
    """Why the chosen model's roofline is missing, or what module it is of."""
    if state["best"] is None:
        return "<p id='roofline-chosen-note'>No chosen model yet.</p>"
    deployed = (manifest or {}).get("kind") == "deployed"
    runtime = f"a deployed runtime ({escape(str((manifest or {}).get('backend', '?')))})"
    if chosen is None:
        why = (
            f"the chosen model is {runtime}, a graph torchslim's op counter cannot see into, "
            "and its trial recorded no float module's roofline"
            if deployed
            else "its trial recorded no roofline (a search started before rooflines were kept)"
        )
        return f"<p id='roofline-chosen-note'>No roofline of the chosen model: {why}.</p>"
    if chosen.get("note"):
        return (
            f"<p id='roofline-chosen-note'>The chosen model runs as {runtime}; torchslim's op "
            "counter cannot see into a runtime graph, so its roofline is that of "
            f"{escape(chosen['note'])} (the same widths and depth, float32 ops): read it for the "
            "structure, not for the runtime's kernels.</p>"
        )
    return ""


def sensitivity_section(state: dict[str, Any]) -> str:
    """The scan as bars (one per layer group, the budget dashed) and a table, or why none."""
    scan = state.get("sensitivity") or {}
    if not scan:
        return "<p id='sensitivity-skipped'>This search did not record a sensitivity scan.</p>"
    if scan["state"] != "scanned":
        return f"<p id='sensitivity-skipped'>Not scanned: {escape(scan['reason'])}.</p>"
    budget = float(state["config"]["max_drop"])
    metric = state["metric"]["name"]
    points = [
        Point(
            layer["drop"],
            0.0,
            f"{layer['name']}: drop {layer['drop']:.4g}, "
            f"{layer['macs_removed']:.0%} of the MACs removed",
        )
        for layer in scan["layers"]
    ]
    rows = "".join(
        f"<tr><td class='text'>{escape(layer['name'])}</td><td>{layer['drop']:.4f}</td>"
        f"<td>{layer['macs_removed']:.1%}</td></tr>"
        for layer in scan["layers"]
    )
    head = f"<tr><th>layer group</th><th>{escape(metric)} drop</th><th>MACs removed</th></tr>"
    return (
        f"<p id='sensitivity-note'>Each prunable layer group pruned alone by "
        f"{scan['ratio']:.0%} of its units ({scan['importance']} importance, no recovery), "
        f"the {escape(metric)} drop in the budget's units (dashed: the budget, {budget:g}); "
        f"most sensitive first; {scan['seconds']:.1f} s before the first trial. Candidates it "
        f"discarded unmeasured (no recovery, at least that share of a group over twice the "
        f"budget): {_discarded_by_scan(state)}.</p>"
        + bars(points, f"{metric} drop", "plot-sensitivity", budget)
        + f"<table id='sensitivity'>{head}{rows}</table>"
    )


def _discarded_by_scan(state: dict[str, Any]) -> int:
    return sum(
        t["state"] == "discarded" and "sensitivity scan" in t.get("reason", "")
        for t in state.get("trials", [])
    )

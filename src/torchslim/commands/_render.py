"""What the commands print: the rich console, JSON, before/after outcomes, data notes."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer
from rich.console import Console

# Piped output (CI logs, files) gets room for the wide per-op tables instead of 80 columns.
console = Console(width=None if sys.stdout.isatty() else 160)


def _print_json(payload: Any) -> None:
    typer.echo(json.dumps(payload, indent=2))


def note_synthetic_data(entry: Any) -> None:
    """Say loudly (on stderr) when a user model is fed synthetic inputs instead of --data."""
    note = getattr(entry, "data_note", None)
    if note:
        Console(stderr=True).print(f"[bold yellow]note:[/] {note}", highlight=False)


def print_outcome(outcome: Any, as_json: bool) -> None:
    """Render a ``CompressionOutcome``: the JSON contract, or a before/after table."""
    if as_json:
        _print_json(outcome.to_dict())
        return
    console.print(outcome.to_table())
    for key in ("execution", "note"):
        if key in outcome.details:
            console.print(f"{key}: {outcome.details[key]}", highlight=False)
    console.print(f"artifact: {outcome.artifact}")


def print_demo_outcome(outcome: Any, macs_before: int, kept: bool) -> None:
    """The before/after table, then what the recipe bought: MACs, size, speed-up vs fp32 eager
    and the metric's change, each from figures measured in this run."""
    from rich.table import Table

    console.print(outcome.to_table())
    stages = outcome.details.get("stages", [])
    macs = [s["figures"]["macs"] for s in stages if "macs" in s.get("figures", {})]
    before, after = outcome.before, outcome.after
    table = Table("what the recipe bought", "measured", title="fp32 eager -> compressed")
    if macs:
        table.add_row(
            "MACs", f"{macs_before:,} -> {macs[-1]:,} ({macs_before / macs[-1]:.2f}x fewer)"
        )
    table.add_row("size", f"{before.size_bytes / after.size_bytes:.2f}x smaller")
    speedup = before.latency.median / after.latency.median
    batch = before.details.get("batch_size", 1)
    table.add_row(f"speed-up vs fp32 eager (batch {batch})", f"{speedup:.2f}x")
    for name, value in before.metrics.items():
        if name in after.metrics:
            change = after.metrics[name] - value
            table.add_row(
                f"{name} change", f"{value:.4f} -> {after.metrics[name]:.4f} ({change:+.4f})"
            )
    console.print(table)
    if "execution" in outcome.details:
        console.print(f"execution: {outcome.details['execution']}", highlight=False)
    if kept:
        console.print(f"artifact: {outcome.artifact}")
    else:
        console.print("artifact discarded (pass --out DIR to keep it)")

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

"""``torchslim compress MODEL --max-drop D`` (search mode) and ``torchslim report DIR``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

MaxDropOption = Annotated[
    float | None,
    typer.Option(
        help="Search mode: the largest allowed fall of the model's metric (accuracy in points: "
        "1.0; Spearman: 0.02). Searches recipes instead of running one."
    ),
]
ObjectiveOption = Annotated[
    str | None, typer.Option(help="Search mode: latency (default) or size, minimised.")
]
TargetOption = Annotated[
    str | None,
    typer.Option(help="Search mode: stop once e.g. latency=0.7 (70 % of it removed) is reached."),
]
BudgetOption = Annotated[str | None, typer.Option(help="Search mode: time budget, e.g. 30m.")]
WorkersOption = Annotated[
    int | None, typer.Option(min=1, help="Search mode: trials at once (>1 starts a local Ray).")
]
RayOption = Annotated[
    str | None, typer.Option("--ray", help="Search mode: join this Ray cluster (auto|host:port).")
]
TrialsOption = Annotated[int | None, typer.Option(min=1, help="Search mode: at most N trials.")]
SeedOption = Annotated[int | None, typer.Option(help="Search mode: seed of the sampler.")]
LowrankOption = Annotated[
    bool,
    typer.Option(
        "--lowrank",
        help="Search mode: also search low-rank factorization (Tucker-2 or whitened SVD, none / "
        "a quarter / a half of the factorized layers' parameters removed).",
    ),
]


@dataclass(frozen=True)
class SearchFlags:
    """The search-mode flags as given (None: not given)."""

    max_drop: float | None = None
    objective: str | None = None
    target: str | None = None
    budget: str | None = None
    workers: int | None = None
    ray: str | None = None
    trials: int | None = None
    seed: int | None = None
    lowrank: bool | None = None  # the flag given: True; not given: None

    def given(self) -> list[str]:
        names = [name for name, value in vars(self).items() if value is not None]
        return ["--" + name.replace("_", "-") for name in names]

    def config(self, threads: int | None, repeats: int) -> Any:
        from torchslim.search import SearchConfig, parse_budget, parse_target

        assert self.max_drop is not None
        objective = self.objective or "latency"
        values: dict[str, Any] = {"objective": objective, "threads": threads, "repeats": repeats}
        if self.target is not None:
            values["target_ratio"] = parse_target(self.target, objective)
        if self.budget is not None:
            values["budget_seconds"] = parse_budget(self.budget)
        optional = {
            "workers": self.workers,
            "ray_address": self.ray,
            "max_trials": self.trials,
            "seed": self.seed,
            "lowrank": self.lowrank,
        }
        values.update({k: v for k, v in optional.items() if v is not None})
        return SearchConfig(max_drop=self.max_drop, **values)


def check_mode(recipe: Path | None, flags: SearchFlags, recipe_only: dict[str, bool]) -> None:
    """One mode per call: ``--recipe`` runs a recipe, ``--max-drop`` searches; a flag of the
    other mode is an error.

    Raises:
        ConfigError: neither or both modes, or a flag the chosen mode does not use.
    """
    from torchslim.errors import ConfigError

    given = flags.given()
    if recipe is None and flags.max_drop is None:
        raise ConfigError(
            "give --recipe R (run a recipe) or --max-drop D (search recipes for the fastest or "
            "smallest model within D of the metric)"
        )
    if recipe is not None and given:
        raise ConfigError(
            f"{', '.join(given)} belong to search mode (--max-drop); with --recipe the recipe "
            "decides what is done: drop them, or drop --recipe to search"
        )
    unused = [name for name, was_given in recipe_only.items() if was_given]
    if recipe is None and unused:
        raise ConfigError(
            f"{', '.join(unused)} apply to running a recipe; a search measures every trial at "
            "batch 1 and resumes with --resume: drop them"
        )


def run_search(entry: Any, out: Path, config: Any, where: tuple[bool, str], as_json: bool) -> None:
    """Run the search (``where``: resume, device) and print where its result and report lie."""
    import contextlib
    import sys

    from torchslim.commands._render import _print_json, console
    from torchslim.search import search

    resume, device = where
    # Backends (NNCF, ORT) print progress to stdout: with --json stdout carries only the JSON.
    with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
        state = search(entry, config, out, resume, device)
    best = state.best()
    if as_json:
        _print_json(
            {
                "out": str(out),
                "stopped": state.stopped,
                "trials": len(state.records),
                "best": best,
                "report": str(out / "report.html"),
            }
        )
        return
    console.print(f"{len(state.records)} trials, stopped: {state.stopped}", highlight=False)
    if best is None:
        console.print("no trial is within --max-drop yet; see the report", highlight=False)
    else:
        console.print(
            f"chosen: trial {best['number']} ({best['description']}): drop {best['drop']:.3f}, "
            f"latency x{best['latency_ratio']:.2f}, size x{best['size_ratio']:.2f} of the "
            f"original -> {out / 'best'}",
            highlight=False,
        )
    console.print(f"report: {out / 'report.html'}", highlight=False)


def report_command(
    directory: Annotated[Path, typer.Argument(help="The --out of a search.")],
) -> None:
    """Write DIR/report.html: one self-contained page of a search (no network needed).

    Example: torchslim report r20-search
    """
    from torchslim.commands._render import console
    from torchslim.search import write_report

    path = write_report(directory)
    console.print(f"wrote {path}", highlight=False)

"""The Optuna study: stored in SQLite inside ``--out`` so a killed search resumes, asked and
told a generation at a time so the same seed gives the same trials on 1 or N workers.

Each trial is sampled by a multi-objective TPE sampler (arXiv 2102.09593) seeded by the search's
seed and the trial's number, given only the trials told before its generation; what it is told
is deterministic too (the metric, MACs and packed bytes: measured latency varies from run to
run, so it decides the front and the chosen model, never the sampling). The accuracy budget is
the sampler's constraint: a trial that drops more than ``max_drop`` is infeasible.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torchslim.errors import ConfigError
from torchslim.search.config import SearchConfig
from torchslim.search.space import AUTO, Space, suggest

STUDY_FILE = "study.db"
STUDY_NAME = "torchslim-search"
DIRECTIONS: list[Any] = [
    "maximize",
    "minimize",
    "minimize",
]  # metric (larger = better), MACs, bytes
CHOICES = "choices"  # user attribute: the trial's choices as the recipe reads them
VIOLATION = "drop_over_budget"  # the constraint: drop - max_drop (> 0: infeasible)


def open_study(out: Path, config: SearchConfig, resume: bool, space: Space | None = None) -> Any:
    """The study of ``out``: a new one, or (``resume``) the stored one, which must have been
    started with the same sampling settings (and, where the space offers ``auto`` depth, the
    same depth choices: a study started before that choice existed cannot take it).

    Raises:
        ConfigError: resume without a study, or with other settings than it was started with;
            a new search in an ``out`` that holds one.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{(out / STUDY_FILE).resolve()}"
    settings = config.sampler_settings()
    if space is not None and AUTO in space.depths:
        settings["depths"] = list(space.depths)
    if not resume:
        if (out / STUDY_FILE).is_file():
            raise ConfigError(
                f"{out} already holds a search study ({STUDY_FILE}): continue it with --resume, "
                f"or give another --out (or remove {out}) to start a new one"
            )
        study = optuna.create_study(
            storage=storage,
            study_name=STUDY_NAME,
            directions=DIRECTIONS,
            sampler=sampler_for(config, 0),
        )
        study.set_user_attr("settings", settings)
        return study
    if not (out / STUDY_FILE).is_file():
        raise ConfigError(f"--resume: {out} holds no search study ({STUDY_FILE}); run without it")
    study = optuna.load_study(study_name=STUDY_NAME, storage=storage)
    stored = study.user_attrs.get("settings")
    if stored != settings:
        changed = sorted(k for k in settings if (stored or {}).get(k) != settings[k])
        raise ConfigError(
            f"--resume: the search in {out} was started with other settings ({', '.join(changed)}"
            f"): stored {stored}; give the same values, or start a new search in another --out"
        )
    return study


def sampler_for(config: SearchConfig, number: int) -> Any:
    """The sampler of trial ``number``: seeded by the search's seed and the number alone."""
    import optuna

    return optuna.samplers.TPESampler(
        seed=config.seed * 1_000_003 + number,
        n_startup_trials=2 * config.generation,
    )


def ask(study: Any, config: SearchConfig, space: Space) -> tuple[Any, dict[str, Any]]:
    """A new trial and its choices."""
    study.sampler = sampler_for(config, len(study.trials))
    trial = study.ask()
    choices = suggest(trial, space)
    trial.set_user_attr(CHOICES, choices)
    return trial, choices


def unfinished(study: Any) -> list[tuple[int, dict[str, Any]]]:
    """(number, choices) of the trials asked and never told (a search killed mid-generation)."""
    from optuna.trial import TrialState

    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    return [(t.number, dict(t.user_attrs[CHOICES])) for t in running if CHOICES in t.user_attrs]


def tell(study: Any, number: int, record: dict[str, Any], max_drop: float) -> None:
    """Tell the study what trial ``number`` gave: its deterministic figures, or that it failed
    or was discarded before being measured."""
    from optuna.trial import TrialState

    state = record["state"]
    if state == "failed":
        study.tell(number, state=TrialState.FAIL)
        return
    if state == "discarded":
        study.tell(number, state=TrialState.PRUNED)
        return
    import optuna

    trial = optuna.Trial(study, study.trials[number]._trial_id)  # asked here or before a kill
    trial.set_constraint(VIOLATION, record["drop"] - max_drop)
    study.tell(trial, [record["score"], record["macs"], record["size_bytes"]])


def generation_start(study: Any, config: SearchConfig) -> int:
    """Trials asked so far, rounded down to a whole generation."""
    return (len(study.trials) // config.generation) * config.generation

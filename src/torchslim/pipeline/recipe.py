"""Recipes: a YAML file of stages, each a registered step with its options, validated whole.

    version: 1
    stages:
      - step: prune
        method: l2
        target: macs=0.5
      - step: finetune
        epochs: 1
        distill: true
      - step: quantize
        scheme: w8a8
      - step: deploy

Every key is checked before any work: an unknown step, an unknown option or a bad value is one
``RecipeError`` naming the file, the line, and the closest valid name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from torchslim.errors import ConfigError, did_you_mean
from torchslim.pipeline.registry import Step, get_step, step_names

RECIPE_VERSION = 1
TOP_LEVEL_KEYS = ("version", "stages", "description")


class RecipeError(ConfigError):
    """A recipe that cannot run as written; the message names the line and the fix."""


@dataclass(frozen=True)
class Stage:
    """One stage: a registered step and its validated options."""

    step: str
    options: Any  # the step's options dataclass
    line: int = 0  # 1-based line in the recipe file (0: built in Python)

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, **_plain(dataclasses.asdict(self.options))}


@dataclass(frozen=True)
class Recipe:
    """Stages run in order on one model; ``source`` is the file it came from, if any."""

    stages: tuple[Stage, ...]
    description: str = ""
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        payload: dict[str, Any] = {"version": RECIPE_VERSION}
        if self.description:
            payload["description"] = self.description
        payload["stages"] = [stage.to_dict() for stage in self.stages]
        return payload

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


class _LineLoader(yaml.SafeLoader):
    """Safe YAML whose mappings remember the line of each key (``_Mapping.lines``)."""


class _Mapping(dict[str, Any]):
    lines: dict[str, int]
    line: int


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> _Mapping:
    mapping = _Mapping()
    mapping.lines, mapping.line = {}, node.start_mark.line + 1
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        mapping[key] = loader.construct_object(value_node, deep=True)
        mapping.lines[str(key)] = key_node.start_mark.line + 1
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


BUILT_IN = Path(__file__).parent / "recipes"


def built_in_recipes() -> list[str]:
    """Names of the recipes shipped with torchslim (``recipes/`` in the repository)."""
    return sorted(path.stem for path in BUILT_IN.glob("*.yaml"))


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate the recipe at ``path``, or the built-in recipe of that name.

    Raises:
        RecipeError: no such file or built-in, unreadable YAML, a wrong version, an unknown step
            or option, a bad value.
    """
    path = Path(path)
    if not path.exists() and path.stem in built_in_recipes() and path.parent == Path("."):
        path = BUILT_IN / f"{path.stem}.yaml"
    elif not path.exists():
        names = built_in_recipes()
        raise RecipeError(
            f"recipe {path}: no such file, nor a built-in recipe.{did_you_mean(path.stem, names)}"
            f" Built-in: {', '.join(names)}."
        )
    try:
        text = path.read_text()
    except OSError as error:
        raise RecipeError(f"cannot read recipe {path}: {error}") from error
    return parse_recipe(text, str(path))


def parse_recipe(text: str, source: str = "<recipe>") -> Recipe:
    """Validate a recipe given as YAML text (``source`` names it in errors)."""
    try:
        document = yaml.load(text, Loader=_LineLoader)
    except yaml.YAMLError as error:
        raise RecipeError(f"{source}: not valid YAML: {error}") from error
    if not isinstance(document, _Mapping):
        raise RecipeError(f"{source}: a recipe is a mapping with 'version' and 'stages'")
    for key in document:
        if key not in TOP_LEVEL_KEYS:
            line = document.lines[str(key)]
            raise RecipeError(
                f"{source}:{line}: unknown key {key!r}.{did_you_mean(str(key), TOP_LEVEL_KEYS)} "
                f"A recipe has {', '.join(TOP_LEVEL_KEYS)}."
            )
    version = document.get("version")
    if version != RECIPE_VERSION:
        line = document.lines.get("version", document.line)
        raise RecipeError(
            f"{source}:{line}: recipe version {version!r}; this torchslim reads version "
            f"{RECIPE_VERSION} (a newer recipe needs a newer torchslim)"
        )
    stages = document.get("stages")
    if not isinstance(stages, list) or not stages:
        line = document.lines.get("stages", document.line)
        raise RecipeError(f"{source}:{line}: 'stages' must be a non-empty list of steps")
    parsed = tuple(_stage(item, source) for item in stages)
    recipe = Recipe(parsed, str(document.get("description", "")), source)
    check_order(recipe)
    return recipe


def _stage(item: Any, source: str) -> Stage:
    if not isinstance(item, _Mapping) or "step" not in item:
        line = getattr(item, "line", "?")
        raise RecipeError(f"{source}:{line}: each stage is a mapping with 'step: <name>'")
    name = str(item["step"])
    line = item.lines["step"]
    if name not in step_names():
        raise RecipeError(
            f"{source}:{line}: unknown step {name!r}.{did_you_mean(name, step_names())} "
            f"Steps: {', '.join(step_names())} (torchslim recipe steps lists their options)."
        )
    step = get_step(name)
    options = {key: value for key, value in item.items() if key != "step"}
    return Stage(name, build_options(step, options, f"{source}:{{line}}", item.lines), line)


def build_options(
    step: Step, values: dict[str, Any], where: str = "", lines: dict[str, int] | None = None
) -> Any:
    """The step's options dataclass from ``values``; errors carry the key's line."""
    lines = lines or {}
    known = [field.name for field in dataclasses.fields(step.options)]
    for key in values:
        if key not in known:
            place = where.format(line=lines.get(str(key), "?")) if where else step.name
            raise RecipeError(
                f"{place}: step {step.name!r} has no option {key!r}."
                f"{did_you_mean(str(key), known)} Its options: {', '.join(known) or 'none'}."
            )
    arguments = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    try:
        return step.options(**arguments)
    except (ConfigError, TypeError, ValueError) as error:
        first = next(iter(values), None)
        place = where.format(line=lines.get(str(first), "?")) if where else step.name
        raise RecipeError(f"{place}: step {step.name!r}: {error}") from error


def check_order(recipe: Recipe) -> None:
    """A final step (``deploy``) must be the last stage: nothing can run on a runtime graph.
    A step that works on fake-quant layers (gptq, adaround, ...) needs an earlier quantizing
    stage; a step that changes the float model (smoothquant, equalize) must precede it."""
    quantized_at: Stage | None = None
    for index, stage in enumerate(recipe.stages):
        step = get_step(stage.step)
        where = f"{recipe.source}:{stage.line}: step {stage.step!r}"
        if (step.final or step.weights_file) and index + 1 < len(recipe.stages):
            what = "writes the weights file" if step.weights_file else "produces a runtime graph"
            raise RecipeError(
                f"{where} {what} and must be the last stage; "
                f"{len(recipe.stages) - index - 1} stage(s) follow it"
            )
        if step.needs_quantized and quantized_at is None:
            raise RecipeError(
                f"{where} works on fake-quant layers: put a stage that quantizes "
                f"({', '.join(_quantizing_steps())}) before it"
            )
        if step.before_quantize and quantized_at is not None:
            raise RecipeError(
                f"{where} changes the float model and must come before the "
                f"{quantized_at.step!r} stage (line {quantized_at.line})"
            )
        if step.quantizes and quantized_at is None:
            quantized_at = stage


def _quantizing_steps() -> list[str]:
    return [name for name in step_names() if get_step(name).quantizes]

"""The search space: every candidate is a recipe of registered steps.

Elastic depth (repeated layers dropped from every stack, NAS-lite: the given model, no new
supernet; or, for a plain model with residual blocks, ``auto``: the pruning step's own plan of
which blocks to drop and which widths to thin, by predicted latency per output damage), elastic
width (structured pruning to a share of the MACs), with ``lowrank`` a
low-rank factorization (a share of the factorized layers' parameters removed: Tucker-2 for a
model with spatial convolutions, arXiv 1511.06530; whitened SVD for one of Linear layers, arXiv
2403.07378), a recovery (none, a
short fine-tune, or distillation from the original), and the number format: for latency fp32 or
a real INT8 runtime (deploy), for size weight-only int8 or int8/int4 per layer by sensitivity
(mixed precision).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torchslim.errors import ConfigError
from torchslim.pipeline.recipe import Recipe, Stage, build_options
from torchslim.pipeline.registry import get_step
from torchslim.search.config import FORMATS

if TYPE_CHECKING:
    from torch import nn

    from torchslim.search.config import SearchConfig
    from torchslim.zoo._entry import ZooEntry

KEEP_MACS = (0.3, 1.0, 0.1)  # low, high, step of the share of MACs kept by pruning
PRUNE_METHODS = ("l1", "l2")
SIZE_BUDGETS = (0.15, 0.2, 0.25)  # mixed precision: weights at this share of float32
LOWRANK_SHARES = (0.0, 0.25, 0.5)  # of the factorized layers' parameters removed
NONE = "none"
AUTO = "auto"  # depth: blocks dropped by the prune step's latency-aware plan (prune depth=auto)
# INT8 candidates run on one runtime: a trial builds one model, not deploy's race of every
# backend (minutes per trial), and its metric does not depend on which one won a timing.
DEPLOY_BACKEND = "openvino"


@dataclass(frozen=True)
class Space:
    """What may vary for one model: depth choices (drop lists as "1,2"), recoveries, formats,
    the training options of a recovery, and the factorization method (None: not searched)."""

    depths: tuple[str, ...]
    recoveries: tuple[str, ...]
    formats: tuple[str, ...]
    recovery_options: dict[str, Any]
    factorize: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "depths": list(self.depths),
            "recoveries": list(self.recoveries),
            "formats": list(self.formats),
            "recovery_options": self.recovery_options,
            "factorize": self.factorize,
        }


def space_for(entry: ZooEntry, model: nn.Module, config: SearchConfig) -> Space:
    """The space of ``entry``'s model under ``config``.

    Raises:
        ConfigError: a fixed ``recovery`` this model has no data for.
    """
    text = entry.task == "sentence-embedding"
    trainable = ("none", "finetune", "distill") if hasattr(entry, "train_data") else ("none",)
    available = ("none", "distill") if text else trainable
    if config.recovery == "auto":
        recoveries = available
    elif config.recovery in available:
        recoveries = (config.recovery,)
    else:
        raise ConfigError(
            f"recovery {config.recovery!r} needs training data that {entry.name} lacks; "
            f"this model allows: {', '.join(available)}"
        )
    formats = config.formats or FORMATS[config.objective]
    options: dict[str, Any] = {"samples": config.recovery_samples}
    if text:  # the built-in text recipe's training settings
        options.update(lr=0.0001, batch_size=64)
    factorize = factorize_method(model) if config.lowrank else None
    depths = depth_choices(model)
    if _plans_depth(model, tuple(entry.example_inputs(1))):
        depths = (*depths, AUTO)
    return Space(depths, recoveries, formats, options, factorize)


def _plans_depth(model: nn.Module, example_inputs: tuple[Any, ...]) -> bool:
    """Whether the prune step's ``depth: auto`` applies: a plain model with residual blocks."""
    from torchslim.prune.blocks import residual_blocks
    from torchslim.prune.config_widths import holds_hugging_face_model

    return not holds_hugging_face_model(model) and bool(residual_blocks(model, example_inputs))


def factorize_method(model: nn.Module) -> str:
    """Tucker-2 for a model with spatial convolutions (its MACs are there), whitened SVD for a
    model of Linear layers.

    Raises:
        ConfigError: neither kind of layer.
    """
    from torch import nn

    layers = list(model.modules())
    if any(isinstance(m, nn.Conv2d) and max(m.kernel_size) > 1 for m in layers):
        return "tucker2"
    if any(isinstance(m, nn.Linear) for m in layers):
        return "whitened"
    raise ConfigError(f"lowrank: {type(model).__name__} has no Conv2d or Linear layer to factorize")


def depth_choices(model: nn.Module) -> tuple[str, ...]:
    """Drop lists that every stack of ``model`` allows: one layer, then more, spread out
    (a 6-layer encoder: "5", "3,5", "1,3,5"; a ResNet stage of 3 blocks: "2", "1,2")."""
    from torchslim.distill.student import drop_layers, layer_stacks

    stacks = layer_stacks(model)
    if not stacks:
        return (NONE,)
    length = min(len(list(stack.children())) for stack in stacks.values())
    order = list(range(length - 1, 0, -2)) + list(range(length - 2, 0, -2))
    most = length - 1 if length <= 3 else length // 2
    choices = [NONE]
    for count in range(1, most + 1):
        drop = sorted(order[:count])
        try:
            drop_layers(model, drop)
        except ConfigError:  # a layer that changes its input's shape: not droppable
            continue
        choices.append(",".join(str(i) for i in drop))
    return tuple(choices)


def suggest(trial: Any, space: Space) -> dict[str, Any]:
    """The trial's choices, asked of the sampler (define-by-run: conditional choices only
    exist where they matter)."""
    params: dict[str, Any] = {"depth": trial.suggest_categorical("depth", space.depths)}
    low, high, step = KEEP_MACS
    params["keep_macs"] = round(trial.suggest_float("keep_macs", low, high, step=step), 2)
    if params["keep_macs"] < 1.0:
        params["prune_method"] = trial.suggest_categorical("prune_method", PRUNE_METHODS)
    if space.factorize is not None:  # asked only when searched: other spaces sample as before
        params["lowrank"] = trial.suggest_categorical("lowrank", LOWRANK_SHARES)
    if _changed(params) and len(space.recoveries) > 1:
        params["recovery"] = trial.suggest_categorical("recovery", space.recoveries)
    params["format"] = trial.suggest_categorical("format", space.formats)
    if params["format"] == "mixed":
        params["size_budget"] = trial.suggest_categorical("size_budget", SIZE_BUDGETS)
    return params


def recipe_for(params: dict[str, Any], space: Space) -> Recipe:
    """The recipe a trial's choices stand for (validated like a recipe file)."""
    stages: list[tuple[str, dict[str, Any]]] = []
    if params["depth"] not in (NONE, AUTO):
        stages.append(("drop_layers", {"layers": [int(i) for i in params["depth"].split(",")]}))
    if params["keep_macs"] < 1.0:
        removed = round(1.0 - params["keep_macs"], 2)
        prune = {"method": params["prune_method"], "target": f"macs={removed}"}
        if params["depth"] == AUTO:
            prune["depth"] = AUTO
        stages.append(("prune", prune))
    if params.get("lowrank", 0.0) > 0.0:
        target = f"params={params['lowrank']}"
        stages.append(("factorize", {"method": space.factorize, "target": target}))
    recovery = params.get("recovery", space.recoveries[0] if len(space.recoveries) == 1 else NONE)
    if _changed(params) and recovery != NONE:
        stages.append((recovery, _recovery_options(recovery, space)))
    if params["format"] == "int8":
        stages.append(("deploy", {"precision": "int8", "backend": DEPLOY_BACKEND}))
    elif params["format"] == "int8w":
        stages.append(("quantize", {"weight": "int8"}))
    elif params["format"] == "mixed":
        budget = params["size_budget"]
        stages.append(
            ("mixed_precision", {"formats": ["int8", "int4"], "size_budget_ratio": budget})
        )
    built = tuple(Stage(name, build_options(get_step(name), values)) for name, values in stages)
    return Recipe(built, describe(params), "search")


def _changed(params: dict[str, Any]) -> bool:
    """Whether the candidate changes the float model (a recovery has something to recover)."""
    lowrank = params.get("lowrank", 0.0) > 0.0
    return params["depth"] not in (NONE, AUTO) or params["keep_macs"] < 1.0 or lowrank


def _recovery_options(recovery: str, space: Space) -> dict[str, Any]:
    options = dict(space.recovery_options)
    if recovery == "finetune":
        options.pop("lr", None)
        options.pop("batch_size", None)
    return options


def describe(params: dict[str, Any]) -> str:
    """One line a person reads: 'depth -[2], 60 % MACs (l2), distill, int8'."""
    parts = []
    if params["depth"] == AUTO and params["keep_macs"] < 1.0:
        parts.append("blocks + widths by latency")
    elif params["depth"] not in (NONE, AUTO):
        parts.append(f"depth -[{params['depth']}]")
    if params["keep_macs"] < 1.0:
        parts.append(f"{params['keep_macs'] * 100:.0f} % MACs ({params['prune_method']})")
    if params.get("lowrank", 0.0) > 0.0:
        parts.append(f"low-rank -{params['lowrank'] * 100:.0f} % params")
    if params.get("recovery", NONE) != NONE:
        parts.append(str(params["recovery"]))
    fmt = params["format"]
    parts.append(f"mixed int8/int4 at {params['size_budget']:.2f}" if fmt == "mixed" else fmt)
    return ", ".join(parts)

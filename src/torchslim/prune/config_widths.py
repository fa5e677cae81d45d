"""Structured pruning of a Hugging Face model through its config: the widths the config names
(``hidden_size``, ``intermediate_size``, ``hidden_sizes[i]``, ``embed_dim``, ...) shrink, the
same in every layer, so the pruned model *is* ``ModelClass(smaller_config)`` and reloads with
plain ``from_pretrained`` anywhere, without torchslim.

Which weight dimensions a width (a *knob*: one field, or fields that must stay equal, such as
ResNet's ``embedding_size`` and ``hidden_sizes[0]``) controls is found by building the model on
the ``meta`` device with it changed and comparing shapes; a knob that would change the model's
output shape (the hidden size of a bare encoder) is left alone. Kept indices are chosen in
``_width_indices``. MACs are counted on ``meta`` by the project's profiler while a bisection on
one factor, then a per-knob refinement, meets the target. Width pruning after Sheared LLaMA
(arXiv:2310.06694) and Minitron (arXiv:2407.14679).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from torchslim._hf_directory import is_hugging_face_model
from torchslim.profile import profile
from torchslim.prune._target import cost, target_of
from torchslim.prune._width_indices import choose_indices, heads_lcm
from torchslim.prune.config import StructuredPruneConfig
from torchslim.prune.graph import PruneError

WIDTH_FIELDS = (
    "hidden_size", "intermediate_size", "n_embd", "n_inner", "hidden_sizes", "embedding_size",
    "embed_dim", "d_model", "d_ff", "encoder_ffn_dim", "decoder_ffn_dim", "depth_multiplier",
    "expand_ratio", "mlp_ratio",
)  # fmt: skip
IMPLIED = {"n_inner": lambda c: 4 * c.n_embd}  # GPT-2: None means 4 x n_embd
HEADED_FIELDS = ("hidden_size", "n_embd", "embed_dim", "d_model")  # split into heads
HEAD_FIELDS = ("num_attention_heads", "n_head", "num_heads", "encoder_attention_heads",
               "decoder_attention_heads")  # fmt: skip
SEARCH_STEPS = 10

Key = tuple[str, int | None]  # (config field, index in a list field or None)
Knob = tuple[Key, ...]  # fields that shrink together
Dim = tuple[str, int]  # (state-dict name, axis)


@dataclass
class WidthPlan:
    """The config widths ``apply()`` will set; print it before applying."""

    model: nn.Module
    example_inputs: tuple[Any, ...]
    owners: dict[Dim, Knob]
    widths: dict[Knob, Any] = field(default_factory=dict)  # knob -> new value
    kept_whole: list[str] = field(default_factory=list)  # widths that would change the output
    macs_before: int = 0
    params_before: int = 0
    macs_after: int = 0
    params_after: int = 0

    @property
    def unsupported(self) -> dict[str, str]:
        return {}

    def __str__(self) -> str:
        lines = [
            f"WidthPlan for {type(self.model).__name__}: MACs {self.macs_before:,} -> "
            f"{self.macs_after:,}, params {self.params_before:,} -> {self.params_after:,}; "
            "the same widths in every layer, so plain from_pretrained reloads it"
        ]
        for knob, value in self.widths.items():
            lines.append(f"  {_name(knob)}: {_get(self.model.config, knob[0])} -> {value}")
        for name in self.kept_whole:
            lines.append(f"  {name}: kept (it sets the model's output shape)")
        return "\n".join(lines)

    def pruned_copy(self, importance: str = "l2") -> nn.Module:
        """``ModelClass(smaller config)`` holding the kept slices of the model's weights."""
        config = _scaled_config(self.model.config, self.widths)
        pruned = type(self.model)(config).to(_device(self.model))
        state = self.model.state_dict()
        shapes = {k: tuple(v.shape) for k, v in pruned.state_dict().items()}
        heads = heads_lcm(self.model.config, HEAD_FIELDS)
        headed = {k for k in set(self.owners.values()) if any(f in HEADED_FIELDS for f, _ in k)}
        indices = choose_indices(state, shapes, self.owners, heads, headed, importance)
        sliced = {}
        for name, tensor in state.items():
            for axis in range(tensor.dim()):
                if tensor.shape[axis] != shapes[name][axis]:
                    tensor = tensor.index_select(axis, indices[(name, axis)].to(tensor.device))
            sliced[name] = tensor.clone()
        pruned.load_state_dict(sliced, strict=True)
        return pruned.train(self.model.training)

    def apply(self, importance: str = "l2") -> nn.Module:
        """Replace the model's contents by the pruned copy (same class, smaller config)."""
        pruned = self.pruned_copy(importance)
        with torch.no_grad():
            pruned.eval()(*self.example_inputs)  # fails here, before the original is touched
        pruned.train(self.model.training)
        self.model.__dict__.clear()
        self.model.__dict__.update(pruned.__dict__)
        return self.model


def holds_hugging_face_model(model: nn.Module) -> bool:
    """``model`` is, or wraps (the zoo's output adapters, sentence encoders), a transformers
    model: its layer stacks have a config that records their depth."""
    return any(is_hugging_face_model(module) for module in model.modules())


def build_width_plan(
    model: nn.Module, example_inputs: tuple[Any, ...], config: StructuredPruneConfig
) -> WidthPlan:
    """Find the config widths of ``model`` and the sizes that meet ``config``'s target."""
    if config.importance not in ("l1", "l2"):
        raise PruneError(
            f"importance {config.importance!r} is not used by config-width pruning of a "
            "transformers model; give importance 'l1' or 'l2'"
        )
    if config.ignore:
        raise PruneError(
            "`ignore` names modules, but a Hugging Face model is pruned through its config widths "
            "(every layer alike); give no `ignore`, or prune the wrapped model instead"
        )
    base = _probe(model, model.config, example_inputs)
    if base is None or base[0] != {k: tuple(v.shape) for k, v in model.state_dict().items()}:
        raise PruneError(
            f"{type(model).__name__}(config) does not rebuild this model's weights, so its config "
            "cannot describe a pruned copy"
        )
    plan = WidthPlan(model, example_inputs, {})
    plan.owners, plan.kept_whole = _owners(model, base, example_inputs)
    if not plan.owners:
        raise PruneError(f"{type(model).__name__}'s config names no width that can shrink")
    plan.macs_before, plan.params_before = _count(model, model.config, example_inputs)
    knobs = sorted(set(plan.owners.values()), key=str)
    if config.uniform_ratio is not None:
        _set_sizes(plan, {k: _scaled(model.config, k, 1 - config.uniform_ratio, config.round_to)
                          for k in knobs})  # fmt: skip
    else:
        _search(plan, knobs, config)
    return plan


def _search(plan: WidthPlan, knobs: list[Knob], config: StructuredPruneConfig) -> None:
    found = target_of(config)
    assert found is not None
    what, target = found
    hf = plan.model.config
    batch_sizes = config.latency_batch_sizes
    full = max(_cost(plan, hf, what, batch_sizes), 1e-12)

    def removed(sizes: dict[Knob, Any]) -> float:
        _set_sizes(plan, sizes)
        return 1 - _cost(plan, _scaled_config(hf, plan.widths), what, batch_sizes) / full

    def at(scale: float) -> dict[Knob, Any]:
        return {k: _scaled(hf, k, scale, config.round_to) for k in knobs}

    if target == 0.0:
        _set_sizes(plan, {})
        return
    if removed(at(0.01)) < target:
        raise PruneError(
            f"target {target:.0%} is out of reach: the smallest config widths remove "
            f"{removed(at(0.01)):.1%} (embeddings, heads, layer count and the widths that set "
            f"the output shape are kept: {plan.kept_whole or 'none'})"
        )
    low, high = 0.01, 1.0
    for _ in range(SEARCH_STEPS):
        middle = (low + high) / 2
        low, high = (middle, high) if removed(at(middle)) >= target else (low, middle)
    sizes = at(low)
    improved = True
    while improved:  # grow single knobs while the target still holds: land close to it
        improved = False
        for knob in knobs:
            bigger = dict(sizes)
            bigger[knob] = _step_up(hf, knob, sizes[knob], config.round_to)
            if bigger[knob] != sizes[knob] and removed(bigger) >= target:
                sizes, improved = bigger, True
    _set_sizes(plan, sizes)


def _cost(plan: WidthPlan, config: Any, what: str, batch_sizes: tuple[int, ...] | None) -> float:
    if what == "MACs" and config is not plan.model.config:
        return float(plan.macs_after)  # just counted by _set_sizes
    with torch.device("meta"):
        built = type(plan.model)(config).eval()
    return cost(built, _on_meta(plan.example_inputs), what, batch_sizes)


def _set_sizes(plan: WidthPlan, sizes: dict[Knob, Any]) -> None:
    hf = plan.model.config
    plan.widths = {k: v for k, v in sizes.items() if v != _get(hf, k[0])}
    smaller = _scaled_config(hf, plan.widths)
    plan.macs_after, plan.params_after = _count(plan.model, smaller, plan.example_inputs)


def _step(config: Any, knob: Knob, round_to: int) -> int:
    if any(key[0] in HEADED_FIELDS for key in knob):
        heads = heads_lcm(config, HEAD_FIELDS)
        return heads * round_to if heads % round_to else heads
    return round_to


def _scaled(config: Any, knob: Knob, scale: float, round_to: int) -> Any:
    old = _get(config, knob[0])
    if isinstance(old, float):
        return old * scale
    step = _step(config, knob, round_to)
    return min(old, max(step, round(old * scale / step) * step))


def _step_up(config: Any, knob: Knob, value: Any, round_to: int) -> Any:
    old = _get(config, knob[0])
    if isinstance(old, float):
        return min(old, value + 0.02 * old)
    return min(old, value + _step(config, knob, round_to))


def _count(model: nn.Module, config: Any, example_inputs: tuple[Any, ...]) -> tuple[int, int]:
    """MACs and parameters of ``ModelClass(config)``, built and run on ``meta``."""
    with torch.device("meta"):
        built = type(model)(config).eval()
    report = profile(built, _on_meta(example_inputs), measure_memory=False)
    return report.total.macs, report.params


def _probe(
    model: nn.Module, config: Any, example_inputs: tuple[Any, ...]
) -> tuple[dict[str, tuple[int, ...]], tuple[int, ...]] | None:
    """Weight shapes and output shape of ``ModelClass(config)`` (on meta); None if it fails."""
    try:
        with torch.device("meta"):
            built = type(model)(config).eval()
        with torch.no_grad():
            output = built(*_on_meta(example_inputs))
    except (ValueError, AssertionError, TypeError, RuntimeError, IndexError):
        return None
    return {k: tuple(v.shape) for k, v in built.state_dict().items()}, _main_shape(output)


def _owners(
    model: nn.Module, base: tuple[dict[str, tuple[int, ...]], tuple[int, ...]], inputs: Any
) -> tuple[dict[Dim, Knob], list[str]]:
    """Which knob sets each weight dimension (change it, see what moves), and the widths kept
    because they set the output shape."""
    moved: dict[Knob, set[Dim]] = {}
    kept: list[str] = []
    keys = _width_keys(model.config)
    for key in keys:
        if any(key in knob for knob in moved):
            continue
        value = _get(model.config, key)
        tied = tuple(k for k in keys if _get(model.config, k) == value and k != key)
        for knob in ((key,), (key, *tied)):
            half = _scaled(model.config, knob, 0.5, 1)
            probed = _probe(model, _scaled_config(model.config, {knob: half}), inputs)
            if probed is not None and set(probed[0]) == set(base[0]):
                break
        else:
            continue
        if probed[1] != base[1]:
            kept.append(_name(knob))
            continue
        moved[knob] = {
            (name, axis)
            for name, shape in base[0].items()
            for axis, (a, b) in enumerate(zip(shape, probed[0][name], strict=True))
            if a != b
        }
    owners: dict[Dim, Knob] = {}
    for knob in sorted(moved, key=lambda k: len(moved[k])):  # the most specific width owns a dim
        for dim in moved[knob]:
            owners.setdefault(dim, knob)
    return owners, kept


def _width_keys(config: Any) -> list[Key]:
    keys: list[Key] = []
    for name in WIDTH_FIELDS:
        value = getattr(config, name, None)
        if value is None and name in IMPLIED and hasattr(config, name):
            value = IMPLIED[name](config)
        if isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value):
            keys += [(name, i) for i in range(len(value))]
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            keys.append((name, None))
    return keys


def _get(config: Any, key: Key) -> Any:
    value = getattr(config, key[0])
    if value is None and key[0] in IMPLIED:
        return IMPLIED[key[0]](config)
    return value if key[1] is None else value[key[1]]


def _name(knob: Knob) -> str:
    return " = ".join(k[0] if k[1] is None else f"{k[0]}[{k[1]}]" for k in knob)


def _scaled_config(config: Any, widths: dict[Knob, Any]) -> Any:
    """A copy of ``config`` with ``widths``; the head size stays what it was (rotary
    embeddings and GQA need whole heads)."""
    new = copy.deepcopy(config)
    for name, implied in IMPLIED.items():  # pinned, so that only the knobs given move
        if hasattr(config, name) and getattr(config, name) is None:
            setattr(new, name, implied(config))
    heads, hidden = getattr(config, "num_attention_heads", None), getattr(config, "hidden_size", 0)
    if isinstance(heads, int) and getattr(config, "head_dim", None) is None and hidden:
        new.head_dim = hidden // heads
    for knob, value in widths.items():
        for name, index in knob:
            if index is None:
                setattr(new, name, value)
            else:
                values = list(getattr(new, name))
                values[index] = value
                setattr(new, name, values)
    return new


def _main_shape(output: Any) -> tuple[int, ...]:
    if isinstance(output, torch.Tensor):
        return tuple(output.shape)
    if hasattr(output, "to_tuple"):
        output = output.to_tuple()
    return _main_shape(output[0])


def _on_meta(inputs: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(x.to("meta") if isinstance(x, torch.Tensor) else x for x in inputs)


def _device(model: nn.Module) -> torch.device:
    return next(iter(model.parameters())).device

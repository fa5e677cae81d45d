"""QuantConfig: every option of ``quantize_`` in one frozen, validated, round-tripping object."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torchslim.errors import ConfigError, did_you_mean, reject_unknown_keys
from torchslim.quantize.formats import QuantFormat
from torchslim.quantize.observers import OBSERVERS

OBSERVER_CHOICES = ("auto", *OBSERVERS)
_OBSERVER_ALIASES = {"moving-average": "moving_average", "min-max": "minmax"}
ACTIVATION_KINDS = ("int", "fp8", "float")  # activations need a range-based or cast format


def parse_activation_format(name: str) -> QuantFormat:
    """An activation format: one scale per tensor (``"int8"`` means ``"int8-tensor"``), or per
    token with the "token" modifier (``"int8-token"``: a scale per row of the last dim, taken
    from each input at run time).

    Raises:
        ConfigError: a non-uniform kind, or group granularity, which activations cannot use.
    """
    fmt = QuantFormat.parse(name)
    if fmt.kind not in ACTIVATION_KINDS:
        raise ConfigError(
            f"activation format {name!r} has kind {fmt.kind!r}; activations allow kinds "
            f"{ACTIVATION_KINDS} (binary/ternary/pow2/kmeans are weight-only)."
        )
    if fmt.granularity == "group":
        raise ConfigError(
            f"activation format {name!r} is per group; activations are quantized per tensor, "
            "use e.g. 'uint8', 'int8' or 'int8-token'."
        )
    granularity = "token" if fmt.granularity == "token" else "tensor"
    return dataclasses.replace(fmt, granularity=granularity, channel_axis=0)


def parse_weight_format(name: str) -> QuantFormat:
    """A weight format (any ``QuantFormat`` short name but a per-token one).

    Raises:
        ConfigError: an unparsable name, or granularity "token" (activations only).
    """
    fmt = QuantFormat.parse(name)
    if fmt.granularity == "token":
        raise ConfigError(
            f"weight format {name!r}: granularity 'token' is for activations (a scale per "
            "input row at run time); weights use 'channel' (e.g. 'int8') or groups ('int4-g64')."
        )
    return fmt


def _check_pattern(what: str, pattern: Any) -> None:
    if not isinstance(pattern, str) or not pattern:
        raise ConfigError(
            f"QuantConfig.{what} entry {pattern!r}; allowed: a module name or 're:<regex>'."
        )
    if pattern.startswith("re:"):
        try:
            re.compile(pattern[3:])
        except re.error as error:
            raise ConfigError(
                f"QuantConfig.{what} pattern {pattern!r}: bad regex ({error})."
            ) from error


def _as_pairs(what: str, value: Any) -> tuple[tuple[str, str | None], ...]:
    items = value.items() if isinstance(value, Mapping) else value
    try:
        pairs = tuple((str(k), None if v is None else str(v)) for k, v in items)
    except (TypeError, ValueError) as error:
        raise ConfigError(
            f"QuantConfig.{what}={value!r}; allowed: a mapping pattern -> format name."
        ) from error
    return pairs


@dataclass(frozen=True)
class QuantConfig:
    """What ``torchslim.quantize_`` does to a model.

    Attributes:
        weight: weight format, any ``QuantFormat`` short name ("int8", "int4-g128", "binary",
            "ternary", "pow2-4", "kmeans-16", "fp8-e4m3", ...).
        activation: format of every quantized layer's input, or None for weight-only. One
            scale per tensor: "uint8" (asymmetric), "int8" (symmetric), "fp8-e4m3", "bf16"; or
            one per token, for Linear inputs only: "int8-token" (symmetric, the scale of each
            row of the last dim from that row at run time: always dynamic, no calibration).
        dynamic: compute activation ranges from each input at run time instead of calibrating
            (per-token formats are dynamic whatever this says).
        observer: "auto" chooses per layer each input's observer by the SQNR of the layer's
            *output* on calibration data (candidates minmax, moving_average, percentile, mse,
            kl) and each int weight's clipping by its MSE; or a fixed "minmax",
            "moving_average", "percentile", "mse" or "kl".
        targets: modules to quantize by exact name or "re:<regex>"; empty = every Linear/Conv2d.
            A pattern that matches no Linear/Conv2d is an error.
        ignore: modules left in float (same pattern syntax).
        overrides: pattern -> weight format for matching layers (mixed precision); the first
            matching pattern wins.
        activation_overrides: pattern -> activation format, or None to leave that layer's input
            in float (e.g. a first conv fed raw pixels at 4-bit activations).
        escalate: with ``observer="auto"``, never leave a layer collapsed: per-tensor int
            weights that lose an output channel or the layer's output (SQNR below
            ``sqnr_floor_db``) become per-channel, and an input that every observer collapses
            while the weights alone do not stays in float; each change is recorded in
            ``LayerDecision.escalation``. On by default with ``observer="auto"``; set False to
            keep the requested formats exactly (sensitivity analysis does, and per-tensor-only
            backends need it).
        sqnr_floor_db: below this SQNR (dB) a layer counts as collapsed for ``escalate``; None =
            half the format's bits (3.01 dB per bit: 24.1 dB at 8 bits); 0 never escalates.
    """

    weight: str = "int8"
    activation: str | None = None
    dynamic: bool = False
    observer: str = "auto"
    targets: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    overrides: tuple[tuple[str, str | None], ...] = field(default=())
    activation_overrides: tuple[tuple[str, str | None], ...] = field(default=())
    escalate: bool | None = None
    sqnr_floor_db: float | None = None

    def __post_init__(self) -> None:
        if self.escalate is None:  # the default: part of "auto", never of a fixed observer
            object.__setattr__(self, "escalate", self.observer == "auto")
        if not isinstance(self.escalate, bool):
            raise ConfigError(f"QuantConfig.escalate={self.escalate!r}; allowed: True, False.")
        if self.escalate and self.observer != "auto":
            raise ConfigError(
                f"QuantConfig.escalate=True with observer={self.observer!r}; escalation is part "
                "of observer='auto' (a fixed observer keeps every format as requested)."
            )
        floor = self.sqnr_floor_db
        if floor is not None and (
            isinstance(floor, bool) or not isinstance(floor, (int, float)) or not 0 <= floor <= 100
        ):
            raise ConfigError(
                f"QuantConfig.sqnr_floor_db={floor!r}; allowed: None (half the bits) or a number "
                "of dB in [0, 100]."
            )
        parse_weight_format(self.weight)
        if self.activation is not None:
            parse_activation_format(self.activation)
        if not isinstance(self.dynamic, bool):
            raise ConfigError(f"QuantConfig.dynamic={self.dynamic!r}; allowed: True, False.")
        if self.dynamic and self.activation is None:
            raise ConfigError(
                "QuantConfig.dynamic=True with activation=None; dynamic quantization needs an "
                "activation format such as 'uint8'."
            )
        observer = _OBSERVER_ALIASES.get(self.observer, self.observer)
        if observer not in OBSERVER_CHOICES:
            hint = did_you_mean(str(self.observer), OBSERVER_CHOICES)
            raise ConfigError(
                f"QuantConfig.observer={self.observer!r}; allowed: {OBSERVER_CHOICES}.{hint}"
            )
        object.__setattr__(self, "observer", observer)
        for what in ("targets", "ignore"):
            value = getattr(self, what)
            if isinstance(value, str):
                value = (value,)
            object.__setattr__(self, what, tuple(value))
            for pattern in getattr(self, what):
                _check_pattern(what, pattern)
        self._normalize_overrides()

    def _normalize_overrides(self) -> None:
        weights = _as_pairs("overrides", self.overrides)
        for pattern, name in weights:
            _check_pattern("overrides", pattern)
            if name is None:
                raise ConfigError(
                    f"QuantConfig.overrides[{pattern!r}]=None; to keep a layer in float put it "
                    "in ignore."
                )
            parse_weight_format(name)
        activations = _as_pairs("activation_overrides", self.activation_overrides)
        for pattern, name in activations:
            _check_pattern("activation_overrides", pattern)
            if name is not None:
                parse_activation_format(name)
        object.__setattr__(self, "overrides", weights)
        object.__setattr__(self, "activation_overrides", activations)

    def weight_format(self, layer: str) -> QuantFormat:
        """The weight format of layer ``layer`` (its first matching override, else ``weight``)."""
        return parse_weight_format(_first_match(layer, self.overrides, self.weight) or self.weight)

    def activation_format(self, layer: str) -> QuantFormat | None:
        """The input format of layer ``layer``, or None when its input stays in float."""
        name = _first_match(layer, self.activation_overrides, self.activation)
        return None if name is None else parse_activation_format(name)

    def static_activation_formats(self) -> tuple[str, ...]:
        """The int/fp8 input formats whose ranges are calibrated before use (not dynamic)."""
        names = {self.activation, *(name for _, name in self.activation_overrides)}
        formats = [(n, parse_activation_format(n)) for n in sorted(filter(None, names))]
        return tuple(
            name
            for name, fmt in formats
            if fmt.kind in ("int", "fp8") and not self.dynamic and fmt.granularity != "token"
        )

    def collapse_floor_db(self, fmt: QuantFormat) -> float:
        """The SQNR (dB) below which a layer quantized to ``fmt`` counts as collapsed."""
        if self.sqnr_floor_db is not None:
            return float(self.sqnr_floor_db)
        return 10 * math.log10(4.0) * fmt.bits / 2  # half the bits: 6.02 dB per bit / 2

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON/YAML friendly); ``QuantConfig.from_dict(c.to_dict()) == c``."""
        values = dataclasses.asdict(self)
        values["targets"], values["ignore"] = list(self.targets), list(self.ignore)
        values["overrides"] = dict(self.overrides)
        values["activation_overrides"] = dict(self.activation_overrides)
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> QuantConfig:
        """Build from :meth:`to_dict` output; unknown keys raise with a "did you mean" hint."""
        reject_unknown_keys(cls, values)
        return cls(**values)


def matches(name: str, pattern: str) -> bool:
    """True when ``name`` equals ``pattern`` or fully matches a ``"re:<regex>"`` pattern."""
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return name == pattern


def _first_match(
    layer: str, pairs: tuple[tuple[str, str | None], ...], default: str | None
) -> str | None:
    for pattern, value in pairs:
        if matches(layer, pattern):
            return value
    return default


def weight_method_problem(config: QuantConfig, method: str) -> str | None:
    """Why ``method`` (gptq, awq) cannot set the weight codes of ``config``'s layers, or None.

    GPTQ and AWQ need int weights. Activations may be quantized only where their ranges come
    from each input at run time (per token, e.g. "int8-token", or ``dynamic=True``): static
    ranges are calibrated on the model before the method changes its weights (AWQ also rescales
    the layers' inputs, which such ranges would clip).
    """
    weight = config.weight_format("")
    if weight.kind != "int":
        return f"{method} sets int weight codes; the weight format is {weight.short_name!r}"
    static = config.static_activation_formats()
    if static:
        return (
            f"{method} with static input ranges ({', '.join(static)}) is not supported: they are "
            f"calibrated before {method} changes the weights (AWQ also rescales the layers' "
            "inputs); quantize activations at run time (per token: 'int8-token', or "
            "dynamic=True) or not at all"
        )
    return None

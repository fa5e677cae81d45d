"""Numeric formats a tensor can be quantized to, and their short names ("int4-g128", "fp8-e4m3").

Conventions:
- Integer grids: symmetric b-bit uses the signed range [-2^(b-1), 2^(b-1) - 1] with zero point 0;
  asymmetric ("uint") b-bit uses [0, 2^b - 1] with an integer zero point.
- Granularity says which elements share one scale: the whole tensor, one slice along
  ``channel_axis`` (output channels of a weight), or groups of ``group_size`` consecutive
  elements inside each channel (the channel's elements flattened in memory order; for a linear
  weight (out, in) that is along ``in``). A group size that does not divide the elements per
  channel is an error when the format meets the tensor, never silent padding.
- Granularity "token" is for activations only: one scale per row of the last dim (per token of
  a (B, T, C) input), taken from each input at run time (dynamic); kinds "int" and "fp8".
- ``bits`` is the storage width of one code: 1 for binary, 2 for ternary, log2(centroids) for
  a k-means codebook, 8 for fp8, 16 for float16/bfloat16.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any

import torch

from torchslim.errors import ConfigError, did_you_mean, reject_unknown_keys

KINDS = ("int", "fp8", "float", "binary", "ternary", "pow2", "codebook")
GRANULARITIES = ("tensor", "channel", "group", "token")
FLOAT_DTYPES = {"fp8": ("float8_e4m3fn", "float8_e5m2"), "float": ("float16", "bfloat16")}
_BITS = {  # kind -> allowed bits (inclusive range)
    "int": (1, 8),
    "fp8": (8, 8),
    "float": (16, 16),
    "binary": (1, 1),
    "ternary": (2, 2),
    "pow2": (2, 8),
    "codebook": (1, 8),
}
_TENSOR_ONLY = ("float", "codebook")  # no scale per channel: a cast, or one codebook per tensor
_DEFAULT_GRANULARITY = {
    "int": "channel",
    "fp8": "tensor",
    "float": "tensor",
    "binary": "channel",
    "ternary": "channel",
    "pow2": "channel",
    "codebook": "tensor",
}
EXAMPLE_NAMES = (
    "int8", "int4", "int4-g128", "int8-tensor", "uint8", "uint8-asym", "int8-asym",
    "fp8-e4m3", "fp8-e5m2", "bf16", "fp16", "binary", "ternary", "pow2-4", "kmeans-16",
    "int8-token",
)  # fmt: skip
_MODIFIERS = ("sym", "asym", "tensor", "channel", "token", "g<N>", "axis<K>")
_TOKEN_KINDS = ("int", "fp8")  # a scale per token from the token's own range


@dataclass(frozen=True)
class QuantFormat:
    """A numeric format: kind, code width, symmetry and who shares a scale.

    Attributes:
        kind: one of "int", "fp8", "float" (fp16/bf16 cast), "binary" (sign x scale),
            "ternary" ({-1, 0, +1} x scale), "pow2" (sign x power of two), "codebook" (k-means).
        bits: code width; int 1..8, fp8 8, float 16, binary 1, ternary 2, pow2 2..8, codebook 1..8.
        symmetric: zero point fixed at 0; False (asymmetric, "uint") only for kind "int".
        granularity: "tensor", "channel", "group" (float and codebook: "tensor" only), or
            "token" (activations only, int and fp8: a scale per row of the last dim).
        group_size: elements per group (> 0) when granularity is "group", else None.
        channel_axis: the axis whose slices get their own scale ("channel" and "group").
        float_dtype: torch dtype name for fp8 ("float8_e4m3fn", "float8_e5m2") and float
            ("float16", "bfloat16"); None for the other kinds.
    """

    kind: str = "int"
    bits: int = 8
    symmetric: bool = True
    granularity: str = "channel"
    group_size: int | None = None
    channel_axis: int = 0
    float_dtype: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(
                f"QuantFormat.kind={self.kind!r}; allowed: {KINDS}.{did_you_mean(self.kind, KINDS)}"
            )
        _check_int("bits", self.bits)
        low, high = _BITS[self.kind]
        if not low <= self.bits <= high:
            raise ConfigError(
                f"QuantFormat.bits={self.bits} for kind {self.kind!r}; allowed: {low}..{high}."
            )
        self._check_symmetry()
        self._check_granularity()
        _check_int("channel_axis", self.channel_axis)
        allowed_dtypes = FLOAT_DTYPES.get(self.kind, (None,))
        if self.float_dtype not in allowed_dtypes:
            raise ConfigError(
                f"QuantFormat.float_dtype={self.float_dtype!r} for kind {self.kind!r}; "
                f"allowed: {allowed_dtypes}."
            )

    def _check_symmetry(self) -> None:
        if not isinstance(self.symmetric, bool):
            raise ConfigError(f"QuantFormat.symmetric={self.symmetric!r}; allowed: True, False.")
        if not self.symmetric and self.kind != "int":
            raise ConfigError(
                f"QuantFormat.symmetric=False for kind {self.kind!r}; only kind 'int' has an "
                "asymmetric (zero point) variant."
            )
        if self.symmetric and self.kind == "int" and self.bits == 1:
            raise ConfigError(
                "QuantFormat.bits=1 with symmetric=True leaves one usable level; use kind "
                "'binary' (sign x scale) or symmetric=False."
            )

    def _check_granularity(self) -> None:
        if self.granularity not in GRANULARITIES:
            hint = did_you_mean(str(self.granularity), GRANULARITIES)
            raise ConfigError(
                f"QuantFormat.granularity={self.granularity!r}; allowed: {GRANULARITIES}.{hint}"
            )
        if self.granularity == "token" and self.kind not in _TOKEN_KINDS:
            raise ConfigError(
                f"QuantFormat.granularity='token' for kind {self.kind!r}; a scale per token needs "
                f"a range-based kind: {_TOKEN_KINDS}."
            )
        if self.kind in _TENSOR_ONLY and self.granularity != "tensor":
            raise ConfigError(
                f"QuantFormat.granularity={self.granularity!r} for kind {self.kind!r}; "
                "allowed: 'tensor'."
            )
        if self.granularity == "group":
            if self.group_size is None:
                raise ConfigError("QuantFormat.group_size=None with granularity 'group'; give > 0.")
            _check_int("group_size", self.group_size)
            if self.group_size <= 0:
                raise ConfigError(f"QuantFormat.group_size={self.group_size}; allowed: > 0.")
        elif self.group_size is not None:
            raise ConfigError(
                f"QuantFormat.group_size={self.group_size!r} with granularity "
                f"{self.granularity!r}; allowed: None (group_size needs granularity 'group')."
            )

    @property
    def qmin(self) -> int:
        """Smallest integer code of an "int" format."""
        return -(2 ** (self.bits - 1)) if self.symmetric else 0

    @property
    def qmax(self) -> int:
        """Largest integer code of an "int" format."""
        return 2 ** (self.bits - 1) - 1 if self.symmetric else 2**self.bits - 1

    @property
    def torch_dtype(self) -> torch.dtype:
        """The torch dtype of an fp8/float format (e.g. ``torch.float8_e4m3fn``)."""
        if self.float_dtype is None:
            raise ConfigError(f"QuantFormat kind {self.kind!r} has no torch float dtype.")
        dtype = getattr(torch, self.float_dtype)
        assert isinstance(dtype, torch.dtype)
        return dtype

    @property
    def short_name(self) -> str:
        """The canonical short name; ``QuantFormat.parse(fmt.short_name) == fmt``."""
        head = {
            "int": f"{'int' if self.symmetric else 'uint'}{self.bits}",
            "fp8": "fp8-e4m3" if self.float_dtype == "float8_e4m3fn" else "fp8-e5m2",
            "float": "fp16" if self.float_dtype == "float16" else "bf16",
            "binary": "binary",
            "ternary": "ternary",
            "pow2": f"pow2-{self.bits}",
            "codebook": f"kmeans-{2**self.bits}",
        }[self.kind]
        parts = [head]
        if self.granularity != _DEFAULT_GRANULARITY[self.kind]:
            parts.append(f"g{self.group_size}" if self.granularity == "group" else self.granularity)
        if self.channel_axis != 0:
            parts.append(f"axis{self.channel_axis}")
        return "-".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """All fields as a plain dict (YAML/JSON friendly)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> QuantFormat:
        """Build from :meth:`to_dict` output; unknown keys raise with a "did you mean" hint."""
        reject_unknown_keys(cls, values)
        return cls(**values)

    @classmethod
    def parse(cls, text: str) -> QuantFormat:
        """Parse a short name: a head, then "-"-separated modifiers.

        Heads: "int<b>" (symmetric), "uint<b>" (asymmetric), "fp8-e4m3", "fp8-e5m2", "bf16",
        "fp16", "binary", "ternary", "pow2-<b>", "kmeans-<centroids>" (a power of two).
        Modifiers: "sym", "asym", "tensor", "channel", "g<N>" (groups of N), "axis<K>".
        Examples: "int8", "int4-g128", "uint8-asym", "int8-tensor", "pow2-4", "kmeans-16".
        """
        parts = text.strip().lower().split("-")
        kind, bits, float_dtype, rest = _parse_head(text, parts)
        values: dict[str, Any] = {
            "kind": kind,
            "bits": bits,
            "symmetric": not parts[0].startswith("uint"),
            "granularity": _DEFAULT_GRANULARITY[kind],
            "float_dtype": float_dtype,
        }
        # "axis-1" (a negative axis) arrives split in two at the "-"
        rest = "-".join(rest).replace("axis-", "axis~").split("-") if rest else []
        for modifier in rest:
            _apply_modifier(text, modifier.replace("axis~", "axis-"), values)
        if parts[0].startswith("uint") and values["symmetric"]:
            raise _bad_name(text, "'uint' is asymmetric; 'sym' contradicts it")
        return cls(**values)


def _check_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"QuantFormat.{name}={value!r}; allowed: an integer.")


def _bad_name(text: str, why: str) -> ConfigError:
    return ConfigError(
        f"cannot parse quantization format {text!r}: {why}.{did_you_mean(text, EXAMPLE_NAMES)} "
        f"Examples: {', '.join(EXAMPLE_NAMES)}."
    )


def _parse_head(text: str, parts: list[str]) -> tuple[str, int, str | None, list[str]]:
    """(kind, bits, float_dtype, remaining modifier tokens) from the leading tokens."""
    head, rest = parts[0], parts[1:]
    if match := re.fullmatch(r"u?int(\d+)", head):
        return "int", int(match.group(1)), None, rest
    if head in ("bf16", "bfloat16"):
        return "float", 16, "bfloat16", rest
    if head in ("fp16", "float16", "half"):
        return "float", 16, "float16", rest
    if head in ("binary", "ternary"):
        return head, 1 if head == "binary" else 2, None, rest
    if head == "fp8":
        variant = rest[0] if rest else "e4m3"
        if variant not in ("e4m3", "e4m3fn", "e5m2"):
            raise _bad_name(text, f"fp8 variant {variant!r}; allowed: 'e4m3', 'e5m2'")
        dtype = "float8_e5m2" if variant == "e5m2" else "float8_e4m3fn"
        return "fp8", 8, dtype, rest[1:]
    if head in ("pow2", "kmeans"):
        if not rest or not rest[0].isdigit():
            raise _bad_name(text, f"{head!r} needs a number: '{head}-<n>'")
        number = int(rest[0])
        if head == "pow2":
            return "pow2", number, None, rest[1:]
        bits = int(math.log2(number)) if number >= 2 else 0
        if 2**bits != number:
            raise _bad_name(text, f"kmeans centroids {number}; allowed: a power of two 2..256")
        return "codebook", bits, None, rest[1:]
    raise _bad_name(text, f"unknown format {head!r}")


def _apply_modifier(text: str, modifier: str, values: dict[str, Any]) -> None:
    if modifier in ("sym", "asym"):
        values["symmetric"] = modifier == "sym"
    elif modifier in ("tensor", "channel", "token"):
        values["granularity"] = modifier
    elif match := re.fullmatch(r"g(\d+)", modifier):
        values["granularity"], values["group_size"] = "group", int(match.group(1))
    elif match := re.fullmatch(r"axis(-?\d+)", modifier):
        values["channel_axis"] = int(match.group(1))
    else:
        hint = did_you_mean(modifier, ("sym", "asym", "tensor", "channel", "token"))
        raise ConfigError(
            f"cannot parse quantization format {text!r}: unknown modifier {modifier!r}; "
            f"allowed: {', '.join(_MODIFIERS)}.{hint}"
        )

"""QuantFormat: validation, dict round trip, short names and their errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from torchslim.errors import ConfigError
from torchslim.quantize import QuantFormat, quantize_dequantize, to_groups


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("int8", dict(kind="int", bits=8, symmetric=True, granularity="channel")),
        ("int4-g128", dict(kind="int", bits=4, granularity="group", group_size=128)),
        ("uint8-asym", dict(kind="int", bits=8, symmetric=False)),
        ("int8-asym", dict(kind="int", bits=8, symmetric=False)),
        ("int8-tensor", dict(kind="int", granularity="tensor")),
        ("fp8-e4m3", dict(kind="fp8", bits=8, float_dtype="float8_e4m3fn", granularity="tensor")),
        ("fp8-e5m2", dict(kind="fp8", bits=8, float_dtype="float8_e5m2")),
        ("bf16", dict(kind="float", bits=16, float_dtype="bfloat16")),
        ("fp16", dict(kind="float", bits=16, float_dtype="float16")),
        ("binary", dict(kind="binary", bits=1, granularity="channel")),
        ("ternary", dict(kind="ternary", bits=2)),
        ("pow2-4", dict(kind="pow2", bits=4)),
        ("kmeans-16", dict(kind="codebook", bits=4, granularity="tensor")),
        ("INT8-axis-1", dict(kind="int", channel_axis=-1)),
    ],
)
def test_parse_short_names(text: str, expected: dict[str, object]) -> None:
    fmt = QuantFormat.parse(text)
    for field, value in expected.items():
        assert getattr(fmt, field) == value, field


@pytest.mark.parametrize(
    "text",
    ["int8", "int2-tensor", "uint4-g32", "int4-g64-axis1", "uint8-axis-1", "fp8-e5m2-channel",
     "bf16", "fp16", "binary-tensor", "ternary-g16", "pow2-3", "kmeans-256"],
)  # fmt: skip
def test_short_name_round_trips_through_parse(text: str) -> None:
    fmt = QuantFormat.parse(text)
    assert QuantFormat.parse(fmt.short_name) == fmt
    assert fmt.short_name == text


def test_dict_round_trip_and_unknown_key_hint() -> None:
    fmt = QuantFormat.parse("uint4-g32")
    assert QuantFormat.from_dict(fmt.to_dict()) == fmt
    with pytest.raises(ConfigError, match=r"'group_sise'.*Did you mean \"group_size\""):
        QuantFormat.from_dict({"kind": "int", "group_sise": 32})


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (dict(kind="integer"), r"QuantFormat.kind='integer'; allowed: .*Did you mean \"int\""),
        (dict(bits=9), r"QuantFormat.bits=9 for kind 'int'; allowed: 1..8"),
        (dict(bits=True), r"QuantFormat.bits=True; allowed: an integer"),
        (dict(kind="fp8", bits=8), r"QuantFormat.float_dtype=None for kind 'fp8'; allowed: "),
        (dict(granularity="chanel"), r"granularity='chanel'.*Did you mean \"channel\""),
        (dict(granularity="group"), r"group_size=None with granularity 'group'"),
        (dict(granularity="group", group_size=-4), r"group_size=-4; allowed: > 0"),
        (dict(group_size=32), r"group_size=32 with granularity 'channel'"),
        (dict(kind="binary", bits=1, symmetric=False), r"symmetric=False for kind 'binary'"),
        (dict(bits=1), r"bits=1 with symmetric=True .* use kind 'binary'"),
        (dict(kind="codebook", bits=4), r"granularity='channel' for kind 'codebook'"),
        (dict(float_dtype="bfloat16"), r"float_dtype='bfloat16' for kind 'int'; allowed: "),
    ],
)  # fmt: skip
def test_invalid_fields_name_field_value_and_allowed_range(
    fields: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        QuantFormat(**fields)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("inf8", r"unknown format 'inf8'.*Did you mean \"int8\""),
        ("kmeans-15", r"power of two.*Did you mean \"kmeans-16\""),
        ("pow2", r"'pow2' needs a number"),
        ("fp8-e3m3", r"fp8 variant 'e3m3'; allowed: 'e4m3', 'e5m2'"),
        ("int4-gg", r"unknown modifier 'gg'"),
        ("int4-tensr", r"unknown modifier 'tensr'.*Did you mean \"tensor\""),
        ("uint8-sym", r"'uint' is asymmetric"),
        ("int12", r"bits=12 for kind 'int'"),
    ],
)
def test_bad_short_names_explain_and_suggest(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        QuantFormat.parse(text)


def test_format_is_frozen_and_integer_ranges_follow_symmetry() -> None:
    fmt = QuantFormat.parse("int4")
    with pytest.raises(dataclasses.FrozenInstanceError):
        fmt.bits = 8
    assert (fmt.qmin, fmt.qmax) == (-8, 7)
    assert (QuantFormat.parse("uint4").qmin, QuantFormat.parse("uint4").qmax) == (0, 15)
    assert QuantFormat.parse("fp8-e5m2").torch_dtype is torch.float8_e5m2


def test_group_size_that_does_not_divide_is_an_error_listing_divisors() -> None:
    weight = torch.randn(4, 100)  # 100 elements per channel
    with pytest.raises(ConfigError, match=r"group_size=32 does not divide the 100 .*\[100, 50"):
        quantize_dequantize(weight, QuantFormat.parse("int4-g32"))
    assert to_groups(weight, 25).shape == (4, 4, 25)

"""What the options of several steps share: the calibration count, and the library config
that a step's options extend (the step's options are that config plus a few pipeline fields)."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from torchslim.errors import ConfigError

Config = TypeVar("Config")


def check_calibration_batches(value: Any) -> None:
    """``calibration_batches`` must be an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"calibration_batches must be an integer >= 1, got {value!r}")


def library_config(options: Any, config_class: type[Config]) -> Config:
    """The library config held by ``options`` (a subclass of ``config_class``): its own fields
    only, so the pipeline's extra fields do not reach the library function."""
    names = [item.name for item in dataclasses.fields(config_class)]  # type: ignore[arg-type]
    return config_class(**{name: getattr(options, name) for name in names})

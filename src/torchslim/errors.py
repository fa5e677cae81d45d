"""The errors torchslim raises: each one says what was wrong and how to fix it."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable


class TorchslimError(Exception):
    """Base class of every error torchslim raises on purpose."""


class MissingAssetError(TorchslimError):
    """A model package or data file is not installed; the message names the install command."""


class UnknownModelError(TorchslimError, KeyError):
    """A model name that is neither a zoo entry nor a loadable path/spec."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ModelLoadError(TorchslimError):
    """A checkpoint or factory that cannot be loaded (corrupt, mismatched, not importable)."""


class InputShapeError(TorchslimError, ValueError):
    """The model rejected the inputs it was given."""


class NonFiniteInputError(TorchslimError, ValueError):
    """A tensor quantized at run time (dynamic ranges) holds NaN or Inf: it has no scale."""


class OutputDirectoryError(TorchslimError):
    """An output directory torchslim may not write: a file, unwritable, or holding the user's
    own files (which torchslim never removes)."""


class ConfigError(TorchslimError, ValueError):
    """A configuration value out of its allowed range, or an unknown key."""


def reject_unknown_keys(config_class: type, values: Iterable[str], what: str = "") -> None:
    """Raise ConfigError for the first key of ``values`` that is not a field of the dataclass
    ``config_class``, with a "did you mean" hint and the known keys."""
    known = {field.name for field in dataclasses.fields(config_class)}
    for key in values:
        if key not in known:
            raise ConfigError(
                f"unknown {what or config_class.__name__} key {key!r}.{did_you_mean(key, known)} "
                f"Known keys: {sorted(known)}."
            )


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ' Did you mean "x"?' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f' Did you mean "{close[0]}"?' if close else ""

"""The model options every command shares, and the one function that turns MODEL into an entry.

>>> entry = resolve_model("mypkg.nets:build", ModelOptions(input_shape=(1, 128),
...                       input_dtype="int64", vocab_size=30522))

Each option is checked against the kind of model before any work: an option that a kind of model
cannot use is a ``ConfigError`` that says why, never silently dropped.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from torchslim.errors import ConfigError, ModelLoadError, did_you_mean

if TYPE_CHECKING:
    from torch import nn

    from torchslim.zoo._entry import ZooEntry

INPUT_DTYPES = ("float32", "float16", "bfloat16", "int64", "int32", "bool")
INTEGER_DTYPES = ("int64", "int32")


@dataclass(frozen=True)
class ModelOptions:
    """How to build MODEL and feed it, beyond its name.

    Attributes:
        weights: a ``.safetensors`` (or ``.pt`` state dict) for a factory or a zoo architecture.
        input_shape: one input's shape, batch first (factories; overrides HF / .pt2 defaults).
        input_dtype: the input's dtype (factories): float32, float16, bfloat16, int64, int32, bool.
        vocab_size: integer inputs are token ids drawn from [0, vocab_size).
        seq_len: tokens per sequence of a text model (replaces the input's second dimension).
        data: the user's own data (folder of images, .npy / .safetensors tensors, a text file),
            split into disjoint calibration and evaluation parts.
    """

    weights: Path | None = None
    input_shape: tuple[int, ...] | None = None
    input_dtype: str | None = None
    vocab_size: int | None = None
    seq_len: int | None = None
    data: Path | None = None

    def __post_init__(self) -> None:
        if self.input_shape is not None and (
            not self.input_shape or any(int(d) <= 0 for d in self.input_shape)
        ):
            raise ConfigError(
                f"--input-shape {self.input_shape}: positive integers, batch first (e.g. 1,3,32,32)"
            )
        if self.input_dtype is not None and self.input_dtype not in INPUT_DTYPES:
            raise ConfigError(
                f"--input-dtype {self.input_dtype!r}; allowed: {', '.join(INPUT_DTYPES)}."
                f"{did_you_mean(self.input_dtype, INPUT_DTYPES)}"
            )
        if self.vocab_size is not None and self.vocab_size < 1:
            raise ConfigError(f"--vocab-size {self.vocab_size}: must be at least 1")
        if self.vocab_size is not None and self.input_dtype not in INTEGER_DTYPES:
            raise ConfigError(
                "--vocab-size describes token ids: pass it with --input-dtype int64 (or int32)"
            )
        if self.input_dtype in INTEGER_DTYPES and self.vocab_size is None:
            raise ConfigError(
                f"--input-dtype {self.input_dtype} inputs are token ids: pass --vocab-size N "
                "(ids are drawn from [0, N))"
            )
        if self.seq_len is not None and self.seq_len < 1:
            raise ConfigError(f"--seq-len {self.seq_len}: must be at least 1")
        for name in ("weights", "data"):
            path = getattr(self, name)
            if path is not None and not Path(path).exists():
                raise ModelLoadError(f"--{name} {path}: no such file or directory")

    def to_dict(self) -> dict[str, object]:
        """The options that were set, JSON-ready (paths absolute, so an artifact finds them)."""
        values: dict[str, object] = {}
        for name in ("weights", "input_shape", "input_dtype", "vocab_size", "seq_len", "data"):
            value = getattr(self, name)
            if isinstance(value, Path):
                value = str(value.resolve())
            elif isinstance(value, tuple):
                value = list(value)
            if value is not None:
                values[name] = value
        return values

    def without_weights(self) -> ModelOptions:
        return replace(self, weights=None)

    def given(self) -> list[str]:
        """The command-line names of the options that were set (for "does not apply" errors)."""
        flags = {
            "weights": "--weights",
            "input_shape": "--input-shape",
            "input_dtype": "--input-dtype",
            "vocab_size": "--vocab-size",
            "seq_len": "--seq-len",
            "data": "--data",
        }
        return [flag for name, flag in flags.items() if getattr(self, name) is not None]


def parse_shape(text: str | None) -> tuple[int, ...] | None:
    """``"1,3,32,32"`` (or ``1x3x32x32``) -> ``(1, 3, 32, 32)``."""
    if text is None:
        return None
    parts = re.split(r"\s*[,x]\s*", text.strip())
    if not all(part.isdigit() for part in parts):
        raise ConfigError(f"--input-shape {text!r}: expected integers, e.g. 1,3,224,224")
    return tuple(int(part) for part in parts)


def resolve_model(spec: str, options: ModelOptions | None = None) -> ZooEntry:
    """The entry of MODEL: a zoo name (optionally with ``--weights``), a factory spec, a Hugging
    Face directory or a ``.pt2`` file, with ``options`` checked against that kind of model.

    Raises:
        ConfigError: an option that this kind of model cannot use.
        UnknownModelError: ``spec`` is none of the forms (with a "did you mean").
        ModelLoadError: a path or factory that cannot be read.
    """
    from torchslim import zoo

    options = options or ModelOptions()
    if spec in zoo.names():
        entry = _zoo_entry(spec, options)
    elif Path(spec).is_dir() and _is_artifact(Path(spec)):
        entry = _artifact_entry(Path(spec), options)
    elif ":" in spec or Path(spec).exists() or spec.endswith(".pt2"):
        from torchslim.zoo.user import resolve

        entry = resolve(spec, options)
    else:
        return zoo.get(spec)  # raises UnknownModelError with a "did you mean"
    entry.source = {"spec": spec, "options": options.to_dict()}  # type: ignore[attr-defined]
    return entry


def _is_artifact(directory: Path) -> bool:
    from torchslim.pipeline.artifact import read_manifest

    return read_manifest(directory) is not None


def _artifact_entry(directory: Path, options: ModelOptions) -> ZooEntry:
    """A torchslim artifact as MODEL: the original's data and metric, the artifact's model."""
    from torchslim.pipeline.artifact import base_entry, load, read_manifest
    from torchslim.zoo.configured import configured

    if options.given():
        raise ConfigError(
            f"{', '.join(options.given())} cannot be used with the artifact {directory}: it "
            "rebuilds its model with the options recorded in its manifest"
        )
    manifest = read_manifest(directory)
    assert manifest is not None
    entry = configured(base_entry(manifest), loader=lambda: load(directory))
    entry.name = str(directory)
    entry.card = f"{entry.card} Loaded from the torchslim artifact {directory}."
    if manifest.get("kind") == "deployed":
        entry.deployed = True  # type: ignore[attr-defined]
        entry.artifact_directory = directory  # type: ignore[attr-defined]
    return entry


def load_for_run(entry: ZooEntry, threads: int | None, device: str) -> nn.Module:
    """``entry``'s model, to run with ``threads`` on ``device``: a deployed artifact's runtime
    is built with them (llama.cpp and ONNX Runtime fix their threads when built, and refuse a
    device they do not run on); any other model is ``entry.load()``, whose torch threads and
    device the caller sets."""
    directory = getattr(entry, "artifact_directory", None)
    if directory is None:
        return entry.load()
    from torchslim.pipeline.artifact import load

    return load(directory, threads, device)


def _zoo_entry(name: str, options: ModelOptions) -> ZooEntry:
    from torchslim import zoo

    refused = [flag for flag in options.given() if flag not in ("--weights", "--seq-len")]
    if refused:
        raise ConfigError(
            f"{', '.join(refused)} cannot be used with the zoo model {name}: it brings its own "
            "inputs and labelled data. Use a package.module:factory spec, a Hugging Face "
            "directory or a .pt2 file for your own model and data."
        )
    entry = zoo.get(name)
    if options.seq_len is not None and not takes_seq_len(entry):
        raise ConfigError(f"--seq-len: {name} is not a text model (its inputs have no tokens)")
    if options.weights is None and options.seq_len is None:
        return entry
    from torchslim.zoo.configured import configured

    weights = Path(options.weights) if options.weights is not None else None
    return configured(entry, weights, options.seq_len)


def takes_seq_len(entry: object) -> bool:
    """Whether ``entry.example_inputs`` accepts ``seq_len`` (text models)."""
    method = getattr(entry, "example_inputs", None)
    if method is None:
        return False
    parameters = inspect.signature(method).parameters
    return "seq_len" in parameters and getattr(entry, "has_tokens", True)


def require_layers(entry: ZooEntry, command: str) -> None:
    """Refuse a model that is a graph without layers (a .pt2 program) for a layer transform.

    Raises:
        ConfigError: naming the command and what to pass instead.
    """
    if getattr(entry, "deployed", False):
        raise ConfigError(
            f"{command} needs the model's layers but {entry.name} is a deployed runtime graph "
            "(ONNX / OpenVINO / PT2): transform the artifact it was deployed from instead"
        )
    inputs = getattr(entry, "inputs", None)
    if inputs is not None and getattr(inputs, "graph_only", False):
        raise ConfigError(
            f"{command} needs the model's layers (nn.Linear, nn.Conv2d, ...) but {entry.name} is "
            "a torch.export program: a graph of aten ops with no layers to transform. Pass the "
            "model as package.module:factory (with --weights) or a Hugging Face directory; "
            ".pt2 files work with evaluate and profile."
        )

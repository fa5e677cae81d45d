"""Models that are not zoo names: a factory spec, a Hugging Face model directory, or a .pt2 file.

>>> entry = resolve("mypkg.models:build", weights="model.safetensors", input_shape=(1, 3, 32, 32))
>>> model = entry.load()
>>> check_inputs(entry, model, batch_size=4)  # one forward; a rejected shape is an InputShapeError

A user model comes without labelled data, so its only metric is ``output_finite`` (1.0 when every
output element is finite); accuracy-style comparisons are made against the original model by the
caller. Inputs are seeded random tensors: ``example_inputs`` (the eval inputs) use one seed,
``calibration_batches`` others, so calibration never sees the eval batch.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchslim._io import load_state_dict_strict, load_tensors
from torchslim.errors import (
    ConfigError,
    InputShapeError,
    ModelLoadError,
    UnknownModelError,
    did_you_mean,
)
from torchslim.zoo._entry import Batch, ZooEntry, checked_forward
from torchslim.zoo._hf import HuggingFaceOutput, huggingface_class, huggingface_inputs
from torchslim.zoo._inputs import InputSpec, output_tensors, random_batch

EVAL_SEED = 0  # seed of example_inputs (the eval inputs); calibration batch i uses 1 + i
MODEL_SEED = 0  # a factory without weights is built under this seed: the same model every load


class UserEntry(ZooEntry):
    """A user model with seeded random inputs; its one metric is ``output_finite``."""

    task = "user-model"

    def __init__(
        self,
        name: str,
        card: str,
        build: Callable[[], nn.Module],
        inputs: Callable[[int, int], Batch],
        default_batch_size: int = 1,
        calibration_batch_size: int = 8,
    ) -> None:
        self.name, self.card, self._build, self._inputs = name, card, build, inputs
        self.default_batch_size = default_batch_size
        self.calibration_batch_size = calibration_batch_size

    def load(self) -> nn.Module:
        return self._build()

    def example_inputs(self, batch_size: int = 1) -> Batch:
        return self._inputs(batch_size, EVAL_SEED)

    def calibration_batches(self, n: int, batch_size: int | None = None) -> list[Batch]:
        size = batch_size or self.calibration_batch_size
        return [self._inputs(size, EVAL_SEED + 1 + i) for i in range(n)]

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """``output_finite``: 1.0 when every output of the eval batch is finite, else 0.0.

        There is no labelled data for a user model; compare outputs with the original instead.
        """
        output = check_inputs(self, model, self.default_batch_size)
        finite = all(bool(torch.isfinite(tensor).all()) for tensor in output_tensors(output))
        return {"output_finite": float(finite)}

    def metric_names(self) -> tuple[str, ...]:
        return ("output_finite",)


def check_inputs(entry: ZooEntry, model: nn.Module, batch_size: int = 1) -> Any:
    """Run one forward on ``entry.example_inputs(batch_size)`` and return the output.

    Raises:
        InputShapeError: the model rejected the inputs; the message names their shapes and the
            model's own error.
    """
    return checked_forward(model, entry.example_inputs(batch_size), entry.name)


def resolve(
    spec: str, weights: str | None = None, input_shape: tuple[int, ...] | None = None
) -> ZooEntry:
    """The zoo entry of a model that is not a zoo name.

    Args:
        spec: ``package.module:factory`` (called with no arguments, returns an ``nn.Module``), a
            Hugging Face model directory (holds ``config.json``), or a ``torch.export`` ``.pt2``.
        weights: a ``.safetensors`` or ``.pt``/``.pth`` state dict for a factory spec (read with
            ``weights_only=True`` and loaded strictly). Without it the factory's own seeded
            initialisation is used.
        input_shape: one float input's shape, batch first (the batch is replaced by the batch
            size asked for). Required for a factory; overrides what a Hugging Face config or a
            .pt2 file suggests.

    Resolving checks what is cheap (import, attribute, paths, config); ``load()`` builds the
    model, so a factory that returns a non-Module or mismatched weights fail there. Nothing is
    written to disk.

    Raises:
        ModelLoadError: the spec does not import, has no such factory, or the file is unreadable.
        ConfigError: an option is missing or does not apply (``--input-shape``, ``--weights``).
        UnknownModelError: ``spec`` is none of the three forms.
    """
    shape = _checked_shape(input_shape) if input_shape is not None else None
    path = Path(spec)
    if path.is_dir() and (path / "config.json").is_file():
        _no_weights_for(spec, weights, "a Hugging Face directory loads its own weights")
        return _huggingface_entry(path, shape)
    if path.suffix == ".pt2":
        _no_weights_for(spec, weights, "a .pt2 program holds its own weights")
        return _exported_entry(path, shape)
    if path.is_dir():
        raise ModelLoadError(
            f"{path} is a directory without config.json: not a Hugging Face model directory "
            "(save one with model.save_pretrained(path))."
        )
    if ":" in spec and not path.exists():
        return _factory_entry(spec, weights, shape)
    raise UnknownModelError(
        f"{spec!r} is not a zoo name, a package.module:factory spec, a Hugging Face model "
        "directory (with config.json) or a .pt2 file from torch.export.save."
    )


def _checked_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(input_shape)
    if not shape or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ConfigError(
            f"input_shape must be positive integers, batch first (e.g. 1,3,32,32); got {shape}"
        )
    return shape


def _no_weights_for(spec: str, weights: str | None, why: str) -> None:
    if weights is not None:
        raise ConfigError(f"--weights applies to factory specs only; {spec}: {why}.")


# --- package.module:factory -------------------------------------------------------------------


def _factory_entry(spec: str, weights: str | None, shape: tuple[int, ...] | None) -> UserEntry:
    factory = _import_factory(spec)
    if shape is None:
        raise ConfigError(
            f"{spec} is a factory: torchslim cannot know its input shape. Pass --input-shape, "
            "batch first (e.g. --input-shape 1,3,32,32); the batch is replaced by --batch-size."
        )
    if weights is not None and not Path(weights).is_file():
        raise ModelLoadError(f"weights file not found: {weights}")
    specs = (InputSpec(shape),)

    def build() -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(MODEL_SEED)
            try:
                model = factory()
            except Exception as error:
                raise ModelLoadError(
                    f"factory {spec} raised {type(error).__name__}: {error}. It is called with no "
                    "arguments and must return the model."
                ) from error
        if not isinstance(model, nn.Module):
            raise ModelLoadError(
                f"factory {spec} returned {type(model).__name__}, not a torch.nn.Module. It must "
                "return the model itself (weights go in --weights)."
            )
        if weights is not None:
            load_state_dict_strict(model, load_tensors(weights), weights)
        return model.eval()

    source = f"weights {weights}" if weights else f"seeded random init (seed {MODEL_SEED})"
    return UserEntry(
        name=spec,
        card=f"User factory {spec} with {source}; input {shape} float32, seeded normal noise. "
        "Metric: output_finite (no labelled data).",
        build=build,
        inputs=lambda batch_size, seed: random_batch(specs, batch_size, seed),
        default_batch_size=shape[0],
    )


def _import_factory(spec: str) -> Callable[[], Any]:
    module_name, _, attribute = spec.partition(":")
    parts = module_name.split(".") + attribute.split(".")
    if not module_name or not attribute or not all(part.isidentifier() for part in parts):
        raise ModelLoadError(
            f"bad factory spec {spec!r}: expected package.module:factory, e.g. mypkg.models:build"
        )
    cwd = os.getcwd()
    cwd_added = cwd not in sys.path  # like uvicorn: the current directory is importable
    if cwd_added:
        sys.path.append(cwd)
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # the module's own code may raise anything while importing
        raise ModelLoadError(
            f"cannot import module {module_name!r} of {spec}: {type(error).__name__}: {error}. "
            "It must be importable from the current directory or an installed package."
        ) from error
    finally:
        if cwd_added:
            sys.path.remove(cwd)
    found: Any = module
    for name in attribute.split("."):
        if not hasattr(found, name):
            callables = sorted(
                key for key, value in vars(found).items() if callable(value) and key[0] != "_"
            )
            raise ModelLoadError(
                f"{module_name} has no attribute {name!r}.{did_you_mean(name, callables)} "
                f"Callables there: {', '.join(callables[:10]) or 'none'}."
            )
        found = getattr(found, name)
    if not callable(found):
        raise ModelLoadError(f"{spec} is a {type(found).__name__}, not a callable factory.")
    return found


# --- Hugging Face model directory -------------------------------------------------------------


def _huggingface_entry(directory: Path, shape: tuple[int, ...] | None) -> UserEntry:
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(directory, local_files_only=True)
    except Exception as error:  # transformers raises OSError, ValueError, KeyError...
        raise ModelLoadError(f"cannot read {directory / 'config.json'}: {error}") from error
    names, specs = huggingface_inputs(config, shape)

    def build() -> nn.Module:
        model_class = huggingface_class(config)
        try:
            model, info = model_class.from_pretrained(
                directory, local_files_only=True, dtype=torch.float32, output_loading_info=True
            )
        except Exception as error:
            raise ModelLoadError(
                f"cannot load the Hugging Face model in {directory}: {type(error).__name__}: "
                f"{error}"
            ) from error
        # a BERT-style pooler missing from an encoder checkpoint is unused: the output is
        # last_hidden_state; any other missing weight would silently be random
        missing = sorted(k for k in info["missing_keys"] if not k.startswith("pooler."))
        missing += sorted(str(key) for key in info["mismatched_keys"])
        if missing:
            raise ModelLoadError(
                f"weights in {directory} do not fit {model_class.__name__}: missing or mismatched "
                f"{missing[:5]}. Save the model with save_pretrained from the same architecture."
            )
        if hasattr(model.config, "use_cache"):
            model.config.use_cache = False  # outputs are one tensor; a KV cache is wasted work
        return HuggingFaceOutput(model, names).eval()

    return UserEntry(
        name=str(directory),
        card=f"Hugging Face {config.model_type} model from {directory}; inputs "
        f"{', '.join(names)} derived from its config (seeded random). Metric: output_finite.",
        build=build,
        inputs=lambda batch_size, seed: random_batch(specs, batch_size, seed),
        default_batch_size=shape[0] if shape else 1,
    )


# --- torch.export .pt2 ------------------------------------------------------------------------


def _load_program(path: Path) -> torch.export.ExportedProgram:
    """``torch.export.load``: a serialized graph, not Python code, but not risk-free either.

    The graph and weights are read without pickle, except that torch falls back to full
    unpickling (``weights_only=False``) for constants it cannot read safely, so a crafted .pt2
    can run code: load only files you trust.
    """
    if not path.is_file():
        raise ModelLoadError(f".pt2 file not found: {path}")
    try:
        return torch.export.load(path)
    except Exception as error:  # zipfile.BadZipFile, RuntimeError, KeyError, ...
        raise ModelLoadError(
            f"cannot load {path} as a torch.export program: {type(error).__name__}: {error}. "
            "Write it with torch.export.save(torch.export.export(model, args), path)."
        ) from error


def _exported_entry(path: Path, shape: tuple[int, ...] | None) -> UserEntry:
    program = _load_program(path)
    saved = _saved_inputs(program)
    if shape is not None:
        specs: tuple[InputSpec, ...] = (InputSpec(shape),)
        saved = None
    elif saved is not None:
        specs = tuple(_spec_like(tensor) for tensor in saved)
    else:
        raise ConfigError(
            f"{path} saved no positional tensor example inputs; pass --input-shape, batch first."
        )
    static_batch = _static_batch(program)
    first_batch = saved[0].shape[0] if saved else specs[0].shape[0]
    default = static_batch or first_batch

    def inputs(batch_size: int, seed: int) -> Batch:
        if static_batch is not None and batch_size != static_batch:
            raise InputShapeError(
                f"{path} was exported with a static batch size of {static_batch}: its graph "
                f"accepts batch {static_batch} only, not {batch_size}. Use batch size "
                f"{static_batch}, or re-export with dynamic_shapes={{'x': {{0: "
                "torch.export.Dim('batch')}} to accept any batch."
            )
        if saved is not None and seed == EVAL_SEED:
            rows = torch.arange(batch_size) % saved[0].shape[0]  # the user's own inputs, tiled
            return tuple(tensor[rows].clone() for tensor in saved)
        return random_batch(specs, batch_size, seed)

    return UserEntry(
        name=str(path),
        card=f"torch.export program {path}; eval inputs are its saved example inputs, "
        "calibration inputs seeded random with their statistics. Metric: output_finite.",
        build=lambda: _load_program(path).module(),  # reloaded: every load() has fresh weights
        inputs=inputs,
        default_batch_size=default,
        calibration_batch_size=static_batch or 8,
    )


def _saved_inputs(program: torch.export.ExportedProgram) -> tuple[torch.Tensor, ...] | None:
    example = program.example_inputs
    if example is None:
        return None
    args, kwargs = example
    if kwargs or not args or not all(isinstance(a, torch.Tensor) and a.dim() > 0 for a in args):
        return None
    return tuple(args)


def _spec_like(tensor: torch.Tensor) -> InputSpec:
    """Random inputs with the statistics of a saved one (its range for integer inputs)."""
    if tensor.dtype.is_floating_point:
        values = tensor.double()
        std = float(values.std()) if tensor.numel() > 1 else 1.0
        return InputSpec(tuple(tensor.shape), tensor.dtype, mean=float(values.mean()), std=std)
    if tensor.dtype == torch.bool:
        return InputSpec(tuple(tensor.shape), tensor.dtype)
    low, high = int(tensor.min()), int(tensor.max()) + 1
    return InputSpec(tuple(tensor.shape), tensor.dtype, low=low, high=high)


def _static_batch(program: torch.export.ExportedProgram) -> int | None:
    """The batch size the graph is fixed to, or None when its first dimension is symbolic."""
    user_inputs = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        value = node.meta.get("val") if node.op == "placeholder" else None
        if node.name in user_inputs and isinstance(value, torch.Tensor) and value.dim() > 0:
            batch = value.shape[0]
            return None if isinstance(batch, torch.SymInt) else int(batch)
    return None

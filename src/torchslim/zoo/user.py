"""Models that are not zoo names: a factory spec, a Hugging Face model directory, or a .pt2 file.

>>> entry = resolve("mypkg.models:build", ModelOptions(weights=Path("model.safetensors"),
...                 input_shape=(1, 3, 32, 32), data=Path("images/")))
>>> model = entry.load()
>>> entry.evaluate(compressed)  # cosine, top-1 agreement, KL, max abs error vs the original

Its metrics are its fidelity to the original model (``user_entry.py``); its inputs come from
``--data`` or are seeded random tensors shaped by the options.
"""

from __future__ import annotations

import copy
import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchslim._hf_directory import load_weights
from torchslim._io import load_state_dict_strict
from torchslim.errors import ConfigError, ModelLoadError, UnknownModelError, did_you_mean
from torchslim.zoo._hf import HuggingFaceOutput, huggingface_class, huggingface_inputs
from torchslim.zoo._inputs import InputSpec
from torchslim.zoo.options import ModelOptions
from torchslim.zoo.user_data import UserData, read_user_data
from torchslim.zoo.user_entry import MODEL_SEED, UserEntry, UserInputs, check_inputs

__all__ = ["UserEntry", "UserInputs", "check_inputs", "entry_for_model", "resolve"]


def resolve(spec: str, options: ModelOptions | None = None) -> UserEntry:
    """The entry of a model that is not a zoo name.

    Args:
        spec: ``package.module:factory`` (called with no arguments, returns an ``nn.Module``), a
            Hugging Face model directory (holds ``config.json``), or a ``torch.export`` ``.pt2``.
        options: ``weights`` (factories: a ``.safetensors`` or ``.pt`` state dict read with
            ``weights_only=True`` and loaded strictly), ``input_shape`` / ``input_dtype`` /
            ``vocab_size`` (the input, batch first; required for a factory unless ``data`` is a
            tensor file), ``seq_len`` (text models), ``data`` (the user's own data).

    Resolving checks what is cheap (import, attribute, paths, config, data); ``load()`` builds
    the model, so a factory that returns a non-Module or mismatched weights fail there.

    Raises:
        ModelLoadError: the spec does not import, has no such factory, or a file is unreadable.
        ConfigError: an option is missing or does not apply to this kind of model.
        UnknownModelError: ``spec`` is none of the three forms.
    """
    options = options or ModelOptions()
    path = Path(spec)
    if path.is_dir() and (path / "config.json").is_file():
        _refuse(options, ("weights", "input_dtype", "vocab_size"), spec,
                "a Hugging Face directory brings its own weights and derives its inputs from "
                "config.json")  # fmt: skip
        entry = _huggingface_entry(path, options)
    elif path.suffix == ".pt2":
        _refuse(options, ("weights",), spec, "a .pt2 program holds its own weights")
        entry = _exported_entry(path, options)
    elif path.is_dir():
        raise ModelLoadError(
            f"{path} is a directory without config.json: not a Hugging Face model directory "
            "(save one with model.save_pretrained(path))."
        )
    elif ":" in spec and not path.exists():
        entry = _factory_entry(spec, options)
    else:
        raise UnknownModelError(
            f"{spec!r} is not a zoo name, a package.module:factory spec, a Hugging Face model "
            "directory (with config.json) or a .pt2 file from torch.export.save."
        )
    return entry


def entry_for_model(
    model: nn.Module,
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
    calibration: list[Any] | None = None,
    name: str = "",
) -> UserEntry:
    """The entry of a model you hold in Python: ``model`` as it is now is the original that
    fidelity is measured against, ``example_inputs`` (batch first) the evaluation batch, and
    ``calibration`` (batches: tensors or tuples) the calibration data (default: seeded random
    inputs shaped like the example inputs)."""
    inputs = _as_batch(example_inputs)
    reference = copy.deepcopy(model).eval()
    specs = tuple(_spec_like(tensor) for tensor in inputs)
    data = None
    if calibration is not None:
        batches = [_as_batch(batch) for batch in calibration]
        if not batches or any(len(b) != len(inputs) for b in batches):
            raise ConfigError("calibration: a non-empty list of batches shaped like the inputs")
        columns = tuple(torch.cat([b[i] for b in batches]) for i in range(len(inputs)))
        data = UserData(Path("<python>"), "tensors", columns, inputs)
    return UserEntry(
        name=name or type(model).__name__,
        card="A model given in Python; evaluation inputs are its example inputs. Metrics: "
        "fidelity to the model as it was given.",
        build=lambda: copy.deepcopy(reference),
        inputs=UserInputs(specs, saved=None if data else inputs, data=data),
        default_batch_size=int(inputs[0].shape[0]),
    )


def _as_batch(value: Any) -> tuple[torch.Tensor, ...]:
    batch = (value,) if isinstance(value, torch.Tensor) else tuple(value)
    if not batch or not all(isinstance(t, torch.Tensor) and t.dim() > 0 for t in batch):
        raise ConfigError("inputs: a tensor or a tuple of tensors, batch first")
    return batch


FLAGS = {"weights": "--weights", "input_dtype": "--input-dtype", "vocab_size": "--vocab-size"}


def _refuse(options: ModelOptions, names: tuple[str, ...], spec: str, why: str) -> None:
    given = [FLAGS[name] for name in names if getattr(options, name) is not None]
    if given:
        raise ConfigError(f"{', '.join(given)} cannot be used with {spec}: {why}.")


def _specs_from_options(options: ModelOptions) -> tuple[InputSpec, ...] | None:
    if options.input_shape is None:
        if options.input_dtype is not None:
            raise ConfigError("--input-dtype needs --input-shape (the input's shape, batch first)")
        return None
    dtype = getattr(torch, options.input_dtype or "float32")
    high = options.vocab_size or 2
    return (InputSpec(tuple(options.input_shape), dtype, low=0, high=high),)


def _with_data_and_seq_len(
    inputs: UserInputs,
    options: ModelOptions,
    name: str,
    tokenize: Callable[[str], list[int]] | None = None,
) -> UserInputs:
    if options.seq_len is not None:
        inputs = inputs.with_seq_len(options.seq_len, name)
    if options.data is not None:
        data = read_user_data(Path(options.data), inputs.specs, tokenize)
        inputs = replace(inputs, data=data, saved=None)
    return inputs


# --- package.module:factory -------------------------------------------------------------------


def _factory_entry(spec: str, options: ModelOptions) -> UserEntry:
    factory = _import_factory(spec)
    specs = _specs_from_options(options) or _specs_from_data(options)
    if specs is None:
        raise ConfigError(
            f"{spec} is a factory: torchslim cannot know its input shape. Pass --input-shape, "
            "batch first (e.g. --input-shape 1,3,32,32; for token ids add --input-dtype int64 "
            "--vocab-size N), or --data with a tensor file of your inputs."
        )
    weights = str(options.weights) if options.weights is not None else None

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
            load_state_dict_strict(model, load_weights(weights), weights)
        return model.eval()

    inputs = _with_data_and_seq_len(UserInputs(specs), options, spec)
    source = f"weights {weights}" if weights else f"seeded random init (seed {MODEL_SEED})"
    first = inputs.specs[0]
    return UserEntry(
        name=spec,
        card=f"User factory {spec} with {source}; input {first.shape} "
        f"{str(first.dtype).removeprefix('torch.')}. Metrics: fidelity to the original.",
        build=build,
        inputs=inputs,
        default_batch_size=first.shape[0],
    )


def _specs_from_data(options: ModelOptions) -> tuple[InputSpec, ...] | None:
    """Input specs read off a tensor file given as --data (one sample per first-dim row)."""
    data = Path(options.data) if options.data is not None else None
    if data is None or data.suffix not in (".npy", ".safetensors"):
        return None
    from torchslim.zoo.user_data import read_tensor_file

    tensors = read_tensor_file(data)
    if any(t.dim() < 2 or t.shape[0] == 0 for t in tensors):
        raise ConfigError(f"--data {data}: each tensor needs samples first, then the input shape")
    return tuple(replace(_spec_like(t), shape=(1, *t.shape[1:])) for t in tensors)


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


def _huggingface_entry(directory: Path, options: ModelOptions) -> UserEntry:
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(directory, local_files_only=True)
    except Exception as error:  # transformers raises OSError, ValueError, KeyError...
        raise ModelLoadError(f"cannot read {directory / 'config.json'}: {error}") from error
    shape = tuple(options.input_shape) if options.input_shape is not None else None
    names, specs = huggingface_inputs(config, shape)
    causal_lm = any(
        name.endswith(("ForCausalLM", "LMHeadModel")) for name in config.architectures or []
    )
    text_data = options.data is not None and Path(options.data).suffix in (".txt", ".text", ".md")
    tokenize = _tokenizer(directory) if text_data else None
    inputs = _with_data_and_seq_len(
        UserInputs(specs, causal_lm=causal_lm), options, str(directory), tokenize
    )

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
        f"{', '.join(names)} derived from its config. Metrics: fidelity to the original"
        + (" and perplexity." if causal_lm else "."),
        build=build,
        inputs=inputs,
        default_batch_size=shape[0] if shape else 1,
    )


def _tokenizer(directory: Path) -> Callable[[str], list[int]]:
    """The directory's own tokenizer as text -> ids (for a text file given as --data)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    except Exception as error:  # OSError, ValueError, ... when tokenizer files are missing
        raise ConfigError(
            f"--data is a text file but {directory} has no loadable tokenizer ({error}); save "
            "it there with tokenizer.save_pretrained(directory)"
        ) from error
    return lambda text: list(tokenizer(text, add_special_tokens=False)["input_ids"])


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


def _exported_entry(path: Path, options: ModelOptions) -> UserEntry:
    program = _load_program(path)
    saved = _saved_inputs(program)
    specs = _specs_from_options(options)
    if specs is not None:
        saved = None
    elif saved is not None:
        specs = tuple(_spec_like(tensor) for tensor in saved)
    else:
        raise ConfigError(
            f"{path} saved no positional tensor example inputs; pass --input-shape, batch first."
        )
    static_batch = _static_batch(program)
    first_batch = saved[0].shape[0] if saved else specs[0].shape[0]
    inputs = UserInputs(specs, saved=saved, static_batch=static_batch, graph_only=True)
    return UserEntry(
        name=str(path),
        card=f"torch.export program {path}; eval inputs are its saved example inputs (or "
        "--data), calibration inputs seeded random with their statistics (or --data). "
        "Metrics: fidelity to the original.",
        build=lambda: _program_module(path),
        inputs=_with_data_and_seq_len(inputs, options, str(path)),
        default_batch_size=static_batch or first_batch,
    )


def _program_module(path: Path) -> nn.Module:
    """The program as a module, reloaded so every load() has fresh weights.

    ``ExportedProgram.module()`` patches ``train``/``eval`` to raise; the graph was exported in
    eval mode and its behaviour is fixed, so the plain ``nn.Module`` flags are restored.
    """
    module = _load_program(path).module()
    for name in ("train", "eval"):
        module.__dict__.pop(name, None)
    return module


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

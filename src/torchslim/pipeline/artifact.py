"""One artifact format for everything the pipeline writes, and ``load`` for every artifact.

``manifest.json`` holds ``artifact_format: "torchslim"`` and ``artifact_version``, how to rebuild
the original model (``model``: its spec and options), the resolved recipe, each stage's options,
figures and structure record, and the before/after outcome. Weights are ``model.safetensors``
(fake-quant layers stored dequantized, masks folded); a deployed model keeps its runtime files
(ONNX, OpenVINO IR, PT2) and the deploy manifest's keys beside these.

Version 2: the module artifact of a transformers model is a Hugging Face directory (weights under
the transformers model's own names, ``weights_prefix`` in the manifest, ``config.json`` where it
describes the model, ``hf_loadable`` and ``hf.why`` where not); version 1 (wrapper names) still
loads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchslim.errors import ModelLoadError

if TYPE_CHECKING:
    from torch import nn

    from torchslim._compress import CompressionOutcome
    from torchslim.pipeline.recipe import Recipe
    from torchslim.zoo._entry import ZooEntry

ARTIFACT_FORMAT = "torchslim"
ARTIFACT_VERSION = 2  # 2: Hugging Face directory layout; 1 still read
MANIFEST = "manifest.json"


def model_source(entry: ZooEntry) -> dict[str, Any]:
    """How to rebuild ``entry``'s original model: its spec and model options."""
    return getattr(entry, "source", None) or {"spec": entry.name, "options": {}}


def write_pipeline_artifact(
    out: Path,
    entry: ZooEntry,
    model: Any,
    recipe: Recipe,
    outcome: CompressionOutcome,
    extra_files: dict[str, Path] | None = None,
    dense_weights: bool = True,
) -> Path:
    """Write ``model`` (a module or a deployed runtime) with the one manifest, atomically;
    ``extra_files`` (name in the artifact -> file): e.g. the packed fake-quant weights;
    ``dense_weights=False``: no ``model.safetensors`` (an extra file holds the weights)."""
    from torch import nn

    from torchslim._compress import versions

    manifest: dict[str, Any] = {
        "artifact_format": ARTIFACT_FORMAT,
        "artifact_version": ARTIFACT_VERSION,
        "model": model_source(entry),
        "technique": outcome.technique,
        "recipe": recipe.to_dict(),
        "stages": outcome.details.get("stages", []),
        "outcome": outcome.to_dict(),
        "versions": versions(),
        "pruned_shapes": pruned_shapes(outcome.details.get("stages", [])),
    }
    if not isinstance(model, nn.Module) or hasattr(model, "artifact"):
        from torchslim.deploy._runtime import write_artifact

        runtime: Any = model
        deployed = runtime.manifest()
        return write_artifact(out, runtime.artifact, {**deployed, **manifest, "kind": "deployed"})
    from torchslim._compress import write_model_artifact
    from torchslim._hf_directory import hf_directory

    module = {**manifest, "kind": "module"}
    why_not = not_from_pretrained(model, dense_weights)
    stored = storable(model)
    layout = hf_directory(stored, why_not, source_directory(entry))
    return write_model_artifact(out, stored, module, extra_files, dense_weights, layout)


def not_from_pretrained(model: nn.Module, dense_weights: bool) -> str | None:
    """Why a config.json cannot stand for ``model`` whatever its shapes, or None."""
    from torchslim.quantize.modules import quant_modules

    if not dense_weights:
        return "the weights are packed (model.packed), which transformers does not read"
    quantized = quant_modules(model)
    if quantized:
        return (
            f"{len(quantized)} fake-quant layers (e.g. {next(iter(quantized))}): "
            "model.safetensors holds their dequantized weights, and config.json cannot express "
            "their quantization; torchslim.load rebuilds what torchslim measured"
        )
    return None


def source_directory(entry: ZooEntry) -> Path | None:
    """The directory the original model was read from (its tokenizer files are copied)."""
    spec = model_source(entry).get("spec")
    if isinstance(spec, str) and Path(spec).is_dir():
        return Path(spec)
    found = getattr(entry, "hf_directory", None)
    return found() if callable(found) else None


def pruned_shapes(stages: list[dict[str, Any]]) -> dict[str, Any]:
    """The final shapes of every module a prune stage resized (later stages win), so
    ``--weights DIR/model.safetensors`` and ``load_pruned_artifact`` rebuild the model."""
    merged: dict[str, Any] = {}
    for stage in stages:
        merged.update(stage.get("record", {}).get("pruned_shapes", {}))
    return merged


def storable(model: nn.Module) -> nn.Module:
    """A copy with masks folded and fake-quant layers as float layers holding quantized weights."""
    from torchslim.prune.unstructured import folded_copy
    from torchslim.quantize.modules import quant_modules
    from torchslim.quantize.schemes import dequantized_copy

    folded = folded_copy(model)
    return dequantized_copy(folded) if quant_modules(folded) else folded


def read_manifest(directory: str | Path) -> dict[str, Any] | None:
    """The manifest of a torchslim pipeline artifact, None when ``directory`` is none.

    Raises:
        ModelLoadError: a manifest that is not JSON, or of a newer artifact version.
    """
    file = Path(directory) / MANIFEST
    if not file.is_file():
        return None
    try:
        manifest = json.loads(file.read_text())
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"{file}: not a readable manifest ({error})") from error
    if not isinstance(manifest, dict) or manifest.get("artifact_format") != ARTIFACT_FORMAT:
        return None
    version = manifest.get("artifact_version")
    if not isinstance(version, int) or version > ARTIFACT_VERSION:
        raise ModelLoadError(
            f"{directory} is a torchslim artifact of format version {version!r}; this torchslim "
            f"reads versions up to {ARTIFACT_VERSION}: upgrade torchslim to load it"
        )
    return manifest


def base_entry(manifest: dict[str, Any]) -> ZooEntry:
    """The entry of the original model an artifact was made from (its data and metric)."""
    from torchslim.zoo.options import ModelOptions, resolve_model

    source = manifest.get("model") or {}
    options = dict(source.get("options") or {})
    for key in ("weights", "data"):
        if options.get(key) is not None:
            options[key] = Path(options[key])
    if options.get("input_shape") is not None:
        options["input_shape"] = tuple(options["input_shape"])
    return resolve_model(str(source.get("spec")), ModelOptions(**options))


def load(directory: str | Path, threads: int | None = None, device: str = "cpu") -> nn.Module:
    """A runnable model from any artifact the pipeline (``torchslim compress``, ``prune``,
    ``quantize``, ``distill``) writes: the rebuilt module, or a deployed runtime (ONNX,
    OpenVINO, PT2, GGUF on llama.cpp, compressed-tensors on transformers; ``load_deployed``).

    Args:
        directory: the artifact.
        threads: a deployed runtime's threads (default: those recorded when it was built); a
            module runs in torch, whose threads are the caller's (``torch.set_num_threads``).
        device: where the model runs (a deployed runtime other than transformers': the CPU).

    Raises:
        ModelLoadError: not an artifact, a newer format version, weights that do not fit, or a
            GGUF file that is not sound.
        ConfigError: ``threads`` for a module artifact, or a device its runtime does not run on.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    if manifest is None:
        raise ModelLoadError(
            f"{directory} is not a torchslim artifact (no manifest.json with artifact_format "
            f"{ARTIFACT_FORMAT!r}); write one with torchslim compress, prune, quantize or distill"
        )
    if manifest.get("kind") == "deployed":
        from torchslim.deploy import load_deployed

        return load_deployed(directory, threads, device, lambda: base_entry(manifest).meta_model())
    if threads is not None:
        from torchslim.errors import ConfigError

        raise ConfigError(
            f"threads={threads}: {directory} holds a torch module, which runs with torch's "
            "threads: set torch.set_num_threads (the commands' --threads) instead"
        )
    return rebuild(base_entry(manifest), manifest, directory).to(device)


def rebuild(entry: ZooEntry, manifest: dict[str, Any], directory: Path) -> nn.Module:
    """The original model, its stages' structure replayed, the artifact's weights loaded."""
    from torchslim._hf_directory import load_weights
    from torchslim._io import load_state_dict_strict
    from torchslim.pipeline.recipe import build_options
    from torchslim.pipeline.registry import StepContext, get_step

    model = entry.load()
    context = StepContext(entry, model)
    reshaped = False
    for stage in manifest.get("stages", []):
        step = get_step(stage["step"])
        record = stage.get("record", {})
        reshaped = reshaped or bool(record.get("reshaped"))
        if step.restore is not None:
            options = {k: v for k, v in stage["options"].items() if k != "step"}
            model = step.restore(model, build_options(step, options), record, context) or model
    weights = directory / "model.safetensors"
    if not weights.is_file() and (directory / "model.packed").is_file():  # a pack stage's
        from torchslim.pack import read_packed

        weights = directory / "model.packed"
        state = read_packed(weights)
    else:
        state = load_weights(weights)  # the wrapper's names, whatever the artifact version
    if reshaped:  # a student loaded from a checkpoint of other shapes: the artifact's shapes
        from torchslim.distill.student import load_reshaped

        load_reshaped(model, state)
    else:
        load_state_dict_strict(model, state, str(weights))
    return model.eval()

"""An artifact of a transformers model as a Hugging Face directory.

``model.safetensors`` holds the transformers model's own weight names (the zoo wrapper's prefix,
e.g. ``model.``, is stripped and recorded in the manifest as ``weights_prefix``), ``config.json``
is its config (already updated by pruning: widths, heads, ``num_hidden_layers``), the source
directory's tokenizer files are copied, and torchslim's ``manifest.json`` lies beside them, so
``transformers.AutoModel...from_pretrained(DIR)`` and ``torchslim.load(DIR)`` give one model.

``config.json`` is written only when the model its config builds has exactly the artifact's
modules, weight names, shapes and tied weights (checked on the ``meta`` device); otherwise
(per-layer widths, factorized or shared layers, fake-quant layers) the manifest says
``hf_loadable: false`` and why, rather than leave a config that loads other weights.
"""

from __future__ import annotations

import copy
import inspect
import json
import shutil
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchslim._io import load_tensors, save_tensors

WEIGHTS = "model.safetensors"
# copied from the source directory when present: how to feed and run the model, not weights
SOURCE_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.txt", "vocab.json", "merges.txt", "tokenizer.model", "spiece.model",
    "sentencepiece.bpe.model", "chat_template.jinja", "chat_template.json",
    "preprocessor_config.json", "processor_config.json", "generation_config.json",
)  # fmt: skip
# the auto class a user would reach for, most specific first (AutoModel: a bare encoder)
AUTO_CLASSES = (
    "AutoModelForCausalLM", "AutoModelForMaskedLM", "AutoModelForSeq2SeqLM",
    "AutoModelForSequenceClassification", "AutoModelForTokenClassification",
    "AutoModelForQuestionAnswering", "AutoModelForImageClassification",
    "AutoModelForSemanticSegmentation", "AutoModelForObjectDetection", "AutoModel",
)  # fmt: skip
# constructor options a model may have been built with that its config does not record
INIT_OPTIONS = ({"add_pooling_layer": False},)
_SHOWN = 3  # differences named in a "why"
JSON_VALUES = (str, int, float, bool, list, tuple, type(None))  # config values a manifest records


def is_hugging_face_model(model: nn.Module) -> bool:
    """A transformers ``PreTrainedModel`` (it has a config and ``save_pretrained``)."""
    return hasattr(model, "config") and hasattr(model, "save_pretrained")


@dataclass(frozen=True)
class HFDirectory:
    """How a module artifact is laid out: ``inner`` (the transformers model holding every
    weight, under ``prefix``) or None, and why ``from_pretrained`` cannot load it, if so."""

    inner: nn.Module | None
    prefix: str = ""
    why_not: str | None = None
    source: Path | None = None  # a directory whose tokenizer files are copied

    def write(self, directory: Path, state: dict[str, torch.Tensor] | None) -> dict[str, Any]:
        """Write the weights (``state``; None: another file holds them), ``config.json`` when
        it describes them, the source's tokenizer files; return the manifest's fields."""
        fields: dict[str, Any] = {"hf_loadable": False, "hf": {"why": self.why_not}}
        if self.inner is None:
            if state is not None:
                save_tensors(directory / WEIGHTS, state)
            return fields
        if state is not None:
            start = len(self.prefix)
            own = {name[start:]: tensor for name, tensor in state.items()}
            save_tensors(directory / WEIGHTS, own, metadata={"format": "pt"})
        copied = copy_source_files(self.source, directory)
        why: str | None = self.why_not
        kwargs: dict[str, Any] = {}
        if why is None:
            why, kwargs = write_config(self.inner, directory)
        fields = {"weights_prefix": self.prefix, "hf_loadable": why is None}
        fields["hf"] = {"why": why, "architecture": type(self.inner).__name__,
                        "auto_class": auto_class(self.inner) if why is None else None,
                        "from_pretrained_kwargs": kwargs, "copied_files": copied}  # fmt: skip
        return fields


def hf_directory(
    model: nn.Module, why_not: str | None = None, source: Path | None = None
) -> HFDirectory:
    """The layout of ``model``'s artifact; ``why_not``: a reason known to the caller (e.g.
    fake-quant layers) that ``from_pretrained`` would not rebuild the model."""
    found = _holder(model)
    if found is None:
        why = "not a transformers model: no PreTrainedModel holds all its weights"
        return HFDirectory(None, why_not=why)
    prefix, inner = found
    import transformers

    if getattr(transformers, type(inner).__name__, None) is not type(inner):
        why_not = why_not or (
            f"{type(inner).__name__} is not a transformers class (custom code): "
            "from_pretrained would need that code"
        )
    return HFDirectory(inner, prefix, why_not, source)


def _holder(model: nn.Module) -> tuple[str, nn.Module] | None:
    """(prefix, module) of the outermost transformers model, if every weight lies in it."""
    names = list(model.state_dict())
    for name, module in model.named_modules():
        if is_hugging_face_model(module):
            prefix = f"{name}." if name else ""
            return (prefix, module) if all(n.startswith(prefix) for n in names) else None
    return None


def write_config(inner: nn.Module, directory: Path) -> tuple[str | None, dict[str, Any]]:
    """Write ``config.json`` if the model it builds is ``inner``'s structure; (why not, or
    None, and the ``from_pretrained`` keyword arguments the build needs)."""
    import transformers

    config: Any = copy.deepcopy(inner.config)
    config.architectures = [type(inner).__name__]
    floats = [p.dtype for p in inner.parameters() if p.is_floating_point()]
    if floats:
        config.dtype = floats[0]
    try:
        config.save_pretrained(directory)  # what from_pretrained will read back
        reread = transformers.AutoConfig.from_pretrained(directory, local_files_only=True)
    except Exception as error:  # the artifact is still written, for torchslim alone
        (directory / "config.json").unlink(missing_ok=True)
        return f"its config cannot be saved and read back ({type(error).__name__}: {error})", {}
    accepted = inspect.signature(type(inner).__init__).parameters
    tries: list[dict[str, Any]] = [{}, *(o for o in INIT_OPTIONS if set(o) <= set(accepted))]
    differences = []
    for kwargs in tries:
        difference = structure_difference(inner, reread, kwargs)
        if difference is None:
            return None, kwargs
        differences.append(difference)
    (directory / "config.json").unlink()
    # name the difference that remains once the modules match (an option fixed them)
    differences.sort(key=lambda text: text.startswith("module types"))
    return f"config.json cannot describe this model: {differences[0]}", {}


def structure_difference(inner: nn.Module, config: Any, kwargs: dict[str, Any]) -> str | None:
    """How ``type(inner)(config, **kwargs)`` (built on ``meta``) differs from ``inner``:
    module types, weight names and shapes, tied weights; None when it does not."""
    try:
        with torch.device("meta"):
            built = type(inner)(config, **kwargs)
    except Exception as error:  # any failure to build is the answer "no"
        return f"{type(inner).__name__}(config) fails to build ({type(error).__name__}: {error})"
    for what, mine, theirs in zip(
        ("module types", "weight shapes"), _layout(inner), _layout(built), strict=True
    ):
        differing = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
        if differing:
            shown = "; ".join(
                f"{k}: {mine.get(k, 'absent')} here, {theirs.get(k, 'absent')} from config"
                for k in differing[:_SHOWN]
            )
            return f"{what} differ at {len(differing)} places ({shown})"
    if _ties(inner) != _ties(built):
        shared = [group for group in _ties(inner) if group not in _ties(built)]
        return f"weights shared across layers ({', '.join(shared[:_SHOWN]) or 'untied'})"
    return None


def _layout(model: nn.Module) -> tuple[dict[str, Any], dict[str, Any]]:
    modules = model.named_modules(remove_duplicate=False)  # a shared layer under each name
    types = {name: type(module).__name__ for name, module in modules}
    shapes = {name: tuple(value.shape) for name, value in model.state_dict().items()}
    return types, shapes


def _ties(model: nn.Module) -> list[str]:
    """Groups of parameter names that are one tensor (tied embeddings, shared layers)."""
    groups: dict[int, list[str]] = defaultdict(list)
    for name, parameter in model.named_parameters(remove_duplicate=False):
        groups[id(parameter)].append(name)
    return sorted(" = ".join(sorted(names)) for names in groups.values() if len(names) > 1)


def auto_class(inner: nn.Module) -> str | None:
    """The transformers auto class whose ``from_pretrained`` builds ``type(inner)``."""
    import transformers

    for name in AUTO_CLASSES:
        mapping = getattr(getattr(transformers, name, None), "_model_mapping", None)
        try:
            found = mapping[type(inner.config)] if mapping is not None else None
        except KeyError:
            continue
        if found is type(inner) or (isinstance(found, tuple) and type(inner) in found):
            return name
    return None


def copy_source_files(source: Path | None, directory: Path) -> list[str]:
    """Copy the tokenizer / processor / generation files ``source`` has; their names."""
    if source is None or not source.is_dir():
        return []
    copied = [name for name in SOURCE_FILES if (source / name).is_file()]
    for name in copied:
        shutil.copyfile(source / name, directory / name)
    return copied


def config_values(model: nn.Module) -> dict[str, Any]:
    """The flat values (no nested configs) of the config of the transformers model in
    ``model``."""
    found = _holder(model)
    if found is None:
        return {}
    config: Any = found[1].config
    values = config.to_dict()
    return {key: value for key, value in values.items() if isinstance(value, JSON_VALUES)}


def config_changes(before: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """The config values of ``model`` that differ from ``before`` (what pruning changed)."""
    after = config_values(model)
    return {key: value for key, value in after.items() if before.get(key) != value}


def apply_config_changes(model: nn.Module, changes: dict[str, Any]) -> None:
    """Set ``changes`` on the config in place: every module holding it sees them."""
    found = _holder(model)
    if found is not None and changes:
        config: Any = found[1].config
        config.update(changes)


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of ``path`` named as in the torchslim model: an artifact's
    ``model.safetensors`` gets back the wrapper prefix its manifest records (version 2)."""
    path = Path(path)
    state = load_tensors(path)
    prefix = _weights_prefix(path.parent) if path.name == WEIGHTS else ""
    return {prefix + name: tensor for name, tensor in state.items()} if prefix else state


def _weights_prefix(directory: Path) -> str:
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError):
        return ""
    prefix = manifest.get("weights_prefix") if isinstance(manifest, dict) else None
    return prefix if isinstance(prefix, str) else ""

"""Pruning a zoo model end to end: config from the CLI words, gradients, prune, fine-tune, fold."""

from __future__ import annotations

import copy
import re
from typing import Any

from torch import nn

from torchslim.errors import ConfigError, did_you_mean
from torchslim.profile import profile
from torchslim.prune import PruneConfig, PruneResult, prune_
from torchslim.prune.config import NMPruneConfig, StructuredPruneConfig, UnstructuredPruneConfig
from torchslim.prune.finetune import FinetuneConfig, accumulate_gradients, finetune_
from torchslim.prune.unstructured import fold_masks_
from torchslim.zoo import ZooEntry

STRUCTURED_METHODS = {"l1": "l1", "l2": "l2", "bn": "bn_scale", "taylor": "taylor"}
MASK_METHODS = {"magnitude": "l1", "l1": "l1", "l2": "l2", "taylor": "taylor", "wanda": "wanda",
                "sparsegpt": "sparsegpt"}  # fmt: skip
TARGET_KEYS = {"macs": "target_macs_ratio", "flops": "target_macs_ratio",
               "params": "target_params_ratio", "ratio": "uniform_ratio",
               "latency": "target_latency_ratio"}  # fmt: skip
METHODS = ("l1", "l2", "bn", "taylor", "magnitude", "nm", "wanda", "sparsegpt")
CALIBRATION_BATCHES = 8  # for "wanda" input norms and "sparsegpt" Hessians
CALIBRATED = ("wanda", "sparsegpt")
DEPTH_CALIBRATION_BATCHES = 2  # depth="auto": damage measured on 2 batches (64 zoo images)
# ``round_to: block``: widths in whole channel blocks of this CPU's conv kernels (fp32 and int8)
ROUND_TO_WORDS = ("block",)
STRUCTURED_FLAGS = {"depth": "--depth", "drop_layers": "--drop-layers", "round_to": "--round-to",
                    "latency_batch_sizes": "--latency-batch-sizes"}  # fmt: skip


def config_from_words(
    method: str,
    target: str,
    ignore: tuple[str, ...] = (),
    scope: str | None = None,
    **structured: Any,
) -> PruneConfig:
    """``--method`` and ``--target`` of ``torchslim prune`` as a validated config.

    ``--method wanda`` scores weights by |w| x input norm on the entry's calibration batches
    (unstructured or N:M); ``--method sparsegpt`` prunes and updates weights layer by layer
    from the inverse input Hessian on them (unstructured per layer, or N:M).
    Targets: ``macs=0.5`` / ``flops=0.5`` (fraction removed; FLOPs =
    2 x MACs so the ratio is the same), ``params=0.5``, ``ratio=0.3`` (of every group's units),
    ``latency=0.5`` (fraction of the latency predicted by the calibrated latency model),
    ``sparsity=0.9``, ``2:4``. ``scope`` (global | layer, default global) is for
    ``sparsity=`` targets only. ``structured``: options of structured targets only, given as
    ``StructuredPruneConfig`` fields: ``depth`` (off | auto: residual blocks dropped where they
    save more predicted latency per damage than widths | measured: the fastest of several
    depth/width plans, timed on this machine), ``drop_layers`` (layers removed from a
    transformers model's stacks), ``round_to`` (kept widths a multiple of it) and
    ``latency_batch_sizes`` (batch sizes latency is scored at: ``depth`` auto|measured or a
    ``latency=R`` target only). None or an absent key: the config's default.
    """
    structured = {k: v for k, v in structured.items() if v is not None}
    _check_structured_options(target, structured)
    if "round_to" in structured:
        structured["round_to"] = resolved_round_to(structured["round_to"])
    if scope is not None and not target.startswith("sparsity="):
        raise ConfigError(
            f"--scope applies to unstructured targets (sparsity=S) only, not --target {target}"
        )
    if method not in METHODS:
        raise ConfigError(f"--method must be one of {METHODS}, got {method!r}")
    nm = re.fullmatch(r"(\d+):(\d+)", target)
    if nm or method == "nm":
        if not (nm and method in ("nm", *CALIBRATED)):
            raise ConfigError(f"N:M sparsity is --method nm|wanda|sparsegpt --target N:M (e.g. "
                              f"2:4), got --method {method} --target {target}")  # fmt: skip
        scores = method if method in CALIBRATED else "l1"
        return NMPruneConfig(int(nm.group(1)), int(nm.group(2)), ignore, scores)
    key, _, value = target.partition("=")
    try:
        ratio = float(value)
    except ValueError:
        raise ConfigError(
            f"--target must be macs=R, flops=R, params=R, ratio=R, sparsity=S or N:M, got "
            f"{target!r}"
        ) from None
    if ratio == 0.0:
        raise ConfigError(
            f"--target {target} removes nothing: give the fraction to remove, in (0, 1), e.g. "
            f"{key}=0.5"
        )
    if key == "sparsity":
        if method not in MASK_METHODS:
            raise ConfigError(f"--target sparsity=... takes --method magnitude|l1|l2|taylor|wanda|"
                              f"sparsegpt, got {method!r}")  # fmt: skip
        method = MASK_METHODS[method]
        default_scope = "layer" if method == "sparsegpt" else "global"
        return UnstructuredPruneConfig(ratio, method=method, scope=scope or default_scope,
                                       ignore=ignore)  # fmt: skip
    if key not in TARGET_KEYS:
        raise ConfigError(f"unknown --target kind {key!r}; use macs, flops, params, latency, "
                          "ratio, sparsity or N:M")  # fmt: skip
    if method not in STRUCTURED_METHODS:
        raise ConfigError(f"--target {key}=... is structured pruning: --method l1|l2|bn|taylor, "
                          f"got {method!r}")  # fmt: skip
    fields: dict[str, Any] = {TARGET_KEYS[key]: ratio, "importance": STRUCTURED_METHODS[method]}
    for name, value in structured.items():
        fields[name] = tuple(value) if isinstance(value, list) else value
    return StructuredPruneConfig(**fields, ignore=ignore)


def resolved_round_to(value: int | str) -> int:
    """``round_to`` as a channel count: an integer as given, or ``"block"``: the channel block
    this CPU's conv kernels pad to (``profile.conv_kernels.channel_block``: 16 with AVX-512).

    A width between two blocks costs about the next block up: an int8 3x3 conv on OpenVINO
    (AMX, 1 thread) took as long with 24 channels as with 32, at 28x28 and 14x14, batch 1 and
    16 (benchmarks/results/int8_channel_probe.json), so a plan that cuts 32 to 24 pays the
    accuracy and gains no time.
    """
    if isinstance(value, str) and value in ROUND_TO_WORDS:
        from torchslim.profile.conv_kernels import channel_block

        return channel_block()
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(
            f"round_to must be an integer >= 1 or one of {ROUND_TO_WORDS} (this CPU's conv "
            f"channel block), got {value!r}{did_you_mean(str(value), ROUND_TO_WORDS)}"
        )
    return value


def _check_structured_options(target: str, options: dict[str, Any]) -> None:
    """Structured-only options are errors with other targets; latency batch sizes are errors
    where nothing predicts latency."""
    unknown = sorted(set(options) - set(STRUCTURED_FLAGS))
    if unknown:
        raise ConfigError(f"unknown structured pruning option(s) {unknown}; known: "
                          f"{sorted(STRUCTURED_FLAGS)}")  # fmt: skip
    key = target.partition("=")[0]
    for name, value in options.items():
        if key not in TARGET_KEYS and value not in ("off", ()):
            raise ConfigError(
                f"{STRUCTURED_FLAGS[name]} applies to structured targets (macs=R, flops=R, "
                f"params=R, latency=R, ratio=R) only, not --target {target}"
            )
    if (
        "latency_batch_sizes" in options
        and key != "latency"
        and options.get("depth")
        in (
            None,
            "off",
        )
    ):
        raise ConfigError(
            f"--latency-batch-sizes sets the batch sizes latency is scored at: it applies with "
            f"--depth auto, --depth measured or --target latency=R, not --target {target} alone"
        )


def needs_gradients(config: PruneConfig) -> bool:
    importance = getattr(config, "importance", None) or getattr(config, "method", None)
    return importance in ("taylor", "movement")


DENSE_MACS_NOTE = "dense MACs: zeroed weights are still multiplied"


def prune_zoo_model(
    entry: ZooEntry, config: PruneConfig, finetune: FinetuneConfig | None = None
) -> tuple[nn.Module, nn.Module, PruneResult, dict[str, Any]]:
    """Load ``entry``, prune a copy, optionally fine-tune it, fold masks.

    Returns:
        (original model, pruned model, prune result, details for the manifest / report).
    """
    before = entry.load()
    model = copy.deepcopy(before)
    result, details = prune_for_entry_(model, entry, config)
    if finetune is not None:
        details["metrics_after_prune_before_finetune"] = entry.evaluate(model)
        details["finetune"] = finetune_(entry, model, finetune)
    fold_masks_(model)
    inputs = tuple(entry.example_inputs(1))
    details["macs_after"] = profile(model, inputs, measure_memory=False).total.macs
    return before, model.eval(), result, details


def prune_for_entry_(
    model: nn.Module, entry: ZooEntry, config: PruneConfig
) -> tuple[PruneResult, dict[str, Any]]:
    """Prune ``model`` in place with ``entry``'s data (gradients for Taylor, calibration batches
    for Wanda); masks of unstructured / N:M pruning stay attached (fine-tuning keeps them).

    Returns:
        (the prune result, details for the manifest / report).
    """
    inputs = tuple(entry.example_inputs(1))
    macs_before = profile(model, inputs, measure_memory=False).total.macs
    if needs_gradients(config):
        accumulate_gradients(entry, model)
    calibration = None
    if getattr(config, "method", None) in CALIBRATED:
        calibration = entry.calibration_batches(CALIBRATION_BATCHES)
    elif getattr(config, "depth", "off") != "off":  # output damage of each planned move
        calibration = entry.calibration_batches(DEPTH_CALIBRATION_BATCHES)
    result = prune_(model, config, inputs, calibration)
    model.zero_grad(set_to_none=True)
    details: dict[str, Any] = {
        "config": {"type": type(config).__name__, **config.to_dict()},
        "params_before": result.params_before,
        "params_after": result.params_after,
        "macs_before": macs_before,
        "sparsity": result.sparsity,
        "plan": str(result.plan) if result.plan is not None else None,
        "macs_note": None if result.sparsity is None else DENSE_MACS_NOTE,
    }
    return result, details

"""Streamed (sequential on-loading) calibration of a decoder LLM, as llm-compressor does: the
model starts as a skeleton with its parameters on ``meta``; the layers outside the decoder
blocks (embeddings, final norm, head) are read from the checkpoint first, then one block at a
time is read, quantized / pruned on the inputs the finished blocks produce, and kept.

The process never holds the checkpoint twice, nor the whole fp32 model before the method
starts: its peak is the result (fp32 fake-quant or masked weights, as the in-memory methods
leave them) plus one block's work. Results are bit-identical to the in-memory path
(``quantize_`` then ``awq_`` / ``gptq_``, or ``prune_``): every block goes through the same
per-block functions on the same inputs, in the same order. What needs the whole model at once
is refused with the in-memory alternative named: static activation ranges, ``escalate``,
global pruning scopes, N:M pruning.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from torchslim._heap import heap_returned_promptly, release_free_heap
from torchslim._hessians import recording_hessians
from torchslim._rollback import untouched_on_failure
from torchslim._targets import weighted_modules
from torchslim.errors import ConfigError
from torchslim.prune.activations import input_norms, recording_input_norms, wanda_scores
from torchslim.prune.config import UnstructuredPruneConfig
from torchslim.prune.sparsegpt import _prune_layer, sparsegpt_block
from torchslim.prune.unstructured import WeightMask, _keep_top, apply_masks_
from torchslim.quantize._blocks import (
    BlockCall,
    BlockWalkError,
    advance,
    capture_block_inputs,
    find_blocks,
)
from torchslim.quantize.apply import select_layers, swap_layer
from torchslim.quantize.awq import AWQConfig, _awq_block, _refuse_static_inputs, block_rules
from torchslim.quantize.calibrate import check_batches
from torchslim.quantize.config import QuantConfig
from torchslim.quantize.gptq import GPTQConfig, _gptq_block, _quantize_layer, gptq_layers, hessians
from torchslim.quantize.modules import drop_weight_caches, eval_mode, quantization_disabled
from torchslim.zoo._gguf import TensorSource, materialize_, tie_


@dataclass(frozen=True)
class StreamedMethod:
    """What to run on each block: weight quantization (``quant``, round-to-nearest) refined by
    ``awq`` and/or ``gptq``, or unstructured pruning (``prune``: wanda or sparsegpt, per layer).

    Raises (on construction):
        ConfigError: neither or both of quant and prune; awq/gptq without quant; a pruning
            method or scope that needs the whole model; activation quantization with static
            ranges or ``escalate`` (they calibrate over the whole model).
    """

    quant: QuantConfig | None = None
    awq: AWQConfig | None = None
    gptq: GPTQConfig | None = None
    prune: UnstructuredPruneConfig | None = None

    def __post_init__(self) -> None:
        if (self.quant is None) == (self.prune is None):
            raise ConfigError("StreamedMethod takes quant=QuantConfig(...) or prune=..., one.")
        if self.quant is None and (self.awq or self.gptq):
            raise ConfigError("StreamedMethod: awq/gptq refine a quantization: set quant too.")
        if self.prune is not None and (
            self.prune.method not in ("wanda", "sparsegpt") or self.prune.scope != "layer"
        ):
            raise ConfigError(
                f"StreamedMethod.prune: method {self.prune.method!r}, scope "
                f"{self.prune.scope!r}; streamed: wanda or sparsegpt with scope='layer' (other "
                "scopes rank every layer at once: use prune_ on the loaded model)."
            )
        if self.quant is not None:
            activation = self.quant.activation
            static = activation is not None and not self.quant.dynamic
            if (static and not str(activation).endswith("-token")) or self.quant.escalate:
                raise ConfigError(
                    "StreamedMethod.quant: static activation ranges and escalate calibrate over "
                    "the whole model; stream weight-only or dynamic formats, or use quantize_ "
                    "on the loaded model."
                )


def calibrate_streamed_(
    model: nn.Module, weights: TensorSource, method: StreamedMethod, calibration: Iterable[Any]
) -> dict[str, Any]:
    """Fill ``model`` (a skeleton on ``meta``, e.g. ``SmolLM2().skeleton()``) from ``weights``
    block by block, running ``method`` on each block as it arrives.

    Returns:
        Per layer (or AWQ group) the method's figures, as ``gptq_`` / ``awq_`` report them,
        the sparsity per pruned layer, and ``seconds``.

    Raises:
        BlockWalkError: the model has no decoder block list.
        ConfigError / CalibrationError / AWQError: as the in-memory methods. On any error the
            model is left as it was (its parameters on ``meta``).
    """
    start = time.perf_counter()
    with untouched_on_failure(model), heap_returned_promptly():
        batches = check_batches(calibration)
        prefix, blocks = find_blocks(model)
        inside = f"{prefix}."
        materialize_(model, weights, skip=inside)  # embeddings, final norm, head
        tie_(model)
        walk = _Walk(model, method, prefix, batches)
        with eval_mode(model):
            for index, block in enumerate(blocks):
                materialize_(model, weights, prefix=f"{inside}{index}.", module=block)
                walk.block(index, block, last=index + 1 == len(blocks))
            walk.finish()
    return {**walk.report, "seconds": round(time.perf_counter() - start, 2)}


class _Walk:
    """The state of one streamed walk: the layer selections (from the skeleton) and the block
    inputs — quantized / pruned ones, and the float ones AWQ and Wanda read."""

    def __init__(
        self, model: nn.Module, method: StreamedMethod, prefix: str, batches: list[Any]
    ) -> None:
        self.model, self.method, self.prefix = model, method, prefix
        self.report: dict[str, Any] = {}
        self.quantize = select_layers(model, method.quant) if method.quant else {}
        self.prune = weighted_modules(model, method.prune.ignore) if method.prune else {}
        needs_calls = method.awq or method.gptq or method.prune
        calls: list[BlockCall] = []
        if needs_calls:  # nothing is quantized before the first block: one capture for both
            calls = capture_block_inputs(model, next(iter(find_blocks(model)[1])), batches)
        self.calls, self.float_calls = calls, calls
        self.batches = batches

    def _inside(self, layers: dict[str, nn.Module], index: int) -> dict[str, nn.Module]:
        start = f"{self.prefix}.{index}."
        return {n[len(start) :]: m for n, m in layers.items() if n.startswith(start)}

    def block(self, index: int, block: nn.Module, last: bool) -> None:
        name = f"{self.prefix}.{index}"
        method = self.method
        for layer, module in self._inside(self.quantize, index).items():
            swap_layer(self.model, f"{name}.{layer}", module, method.quant)  # type: ignore[arg-type]
            release_free_heap()
        if method.awq is not None:
            _refuse_static_inputs([block], method.awq)
            rules = block_rules(block, method.awq)
            figures = _awq_block(block, rules, self.float_calls, method.awq) if rules else {}
            self.report.update({f"{name}: {k}": v for k, v in figures.items()})
            if not last:
                with quantization_disabled(block):
                    self.float_calls = advance(block, self.float_calls)
        if method.gptq is not None:
            layers = self._inside(dict(gptq_layers(self.model)), index)
            figures = _gptq_block(block, layers, self.calls, method.gptq)  # type: ignore[arg-type]
            self.report.update({f"{name}.{k}": v for k, v in figures.items()})
        if method.prune is not None:
            self._prune_block(index, block, last)
        elif method.gptq is not None and not last:
            self.calls = advance(block, self.calls)
        if method.awq is not None and method.gptq is None:
            self.calls = self.float_calls
        drop_weight_caches(block)

    def _prune_block(self, index: int, block: nn.Module, last: bool) -> None:
        config = self.method.prune
        assert config is not None
        name = f"{self.prefix}.{index}"
        layers = self._inside(self.prune, index)
        if config.method == "sparsegpt":
            masks = sparsegpt_block(block, layers, self.calls, config.sparsity, None)
            if not last:
                self.calls = advance(block, self.calls)
        else:  # wanda: input norms of the dense block, recorded while it computes the next inputs
            with recording_input_norms(layers) as norms:
                following = advance(block, self.calls)
            self.calls = following if not last else []
            masks = {}
            for layer, norm in norms().items():
                masks[layer] = _keep_top(wanda_scores(layers[layer], norm), config.sparsity)
                release_free_heap()
        apply_masks_(block, masks)
        for layer, mask in masks.items():
            self.report[f"{name}.{layer}"] = 1.0 - mask.float().mean().item()

    def finish(self) -> None:
        """Layers outside the blocks: swapped, and GPTQ'd / SparseGPT'd from one pass of the
        model as processed (as the in-memory methods do); Wanda would need the dense model."""
        outside = self.prefix + "."
        for name, module in self.quantize.items():
            if not name.startswith(outside):
                swap_layer(self.model, name, module, self.method.quant)  # type: ignore[arg-type]
        if self.method.gptq is not None:
            rest = {n: m for n, m in gptq_layers(self.model).items() if not n.startswith(outside)}
            if rest:
                for name, hessian in hessians(self.model, rest, self.batches, True).items():
                    self.report[name] = _quantize_layer(rest[name], hessian, self.method.gptq)
                drop_weight_caches(self.model)
        if self.method.awq is not None and not any(":" in key for key in self.report):
            raise BlockWalkError(
                f"streamed AWQ found no LLaMA-style scale groups in {self.prefix} (q/k/v, "
                "gate/up fed by input_layernorm/post_attention_layernorm)."
            )
        rest_pruned = {n: m for n, m in self.prune.items() if not n.startswith(outside)}
        if rest_pruned and self.method.prune is not None:
            self._prune_rest(rest_pruned)

    def _prune_rest(self, layers: dict[str, nn.Module]) -> None:
        """Layers after the blocks (an untied head), from one pass of the whole model: pruned
        so far for SparseGPT, dense (masks bypassed) for Wanda, as the in-memory methods."""
        config = self.method.prune
        assert config is not None
        if config.method == "wanda":
            with _masks_bypassed(self.model):
                norms = input_norms(self.model, layers, self.batches)
            masks = {
                n: _keep_top(wanda_scores(layers[n], v), config.sparsity) for n, v in norms.items()
            }
        else:
            with recording_hessians(layers) as sums, torch.no_grad():
                for batch in self.batches:
                    self.model(*batch)
            masks = {
                name: _prune_layer(layers[name], total.value(), config.sparsity, None)
                for name, total in sums.items()
            }
        apply_masks_(self.model, masks)
        self.report.update({n: 1.0 - m.float().mean().item() for n, m in masks.items()})


@contextmanager
def _masks_bypassed(model: nn.Module) -> Iterator[None]:
    """Run ``model`` with its pruning masks off (the dense weights behind them)."""
    masks = [m for m in model.modules() if isinstance(m, WeightMask)]
    for mask in masks:
        mask.forward = _identity  # type: ignore[method-assign]
    try:
        yield
    finally:
        for mask in masks:
            del mask.forward


def _identity(weight: Tensor) -> Tensor:
    return weight

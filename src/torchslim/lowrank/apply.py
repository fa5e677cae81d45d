"""``factorize_``: replace Linear / Conv2d layers by low-rank factors (SVD, whitened SVD,
Tucker-2, CP), in place.

Ranks come from an explicit rank, an energy level, or one global parameter / MAC target: by one
common energy level for every layer (``allocation="uniform"``, found by bisection), or from a
per-layer sensitivity scan (``allocation="sensitivity"``, ``allocate.py``). A factorized layer
that is measured slower than the one it replaces, or that would not be smaller, is left whole;
the result says why. A latency target (``latency.py``) allocates the same two ways over the
ranks estimated faster than each dense layer at its batch size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from torchslim._compress import untouched_on_failure
from torchslim.errors import ConfigError
from torchslim.lowrank import primitives
from torchslim.lowrank._layers import LayerFacts, candidates, fill_spectra, observe
from torchslim.lowrank.allocate import LayerScan, allocate, cost_scans, scan_layers
from torchslim.lowrank.config import FactorizeConfig
from torchslim.lowrank.latency import (
    LatencyEstimator,
    allocate_by_energy,
    at_batch,
    check_reachable,
    estimate_after,
    layer_latency,
)
from torchslim.lowrank.modules import build_factorized

Batches = Sequence[Sequence[Any]]


@dataclass
class FactorizeResult:
    """Per layer: ``kind``, ``ranks``, ``params_before``/``params_after``, ``applied`` and, when
    left whole, ``reason``; ``latency_ms`` (dense, factorized) where speed was measured or, for a
    latency target, estimated (at its batch size, by its source)."""

    method: str
    allocation: str = "uniform"
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    target: dict[str, Any] = field(default_factory=dict)  # unit, goal and kept share of the cost

    def record(self) -> dict[str, dict[str, Any]]:
        """What rebuilds the structure: kind and ranks of every applied layer."""
        return {
            name: {"kind": d["kind"], "ranks": d["ranks"]}
            for name, d in self.layers.items()
            if d["applied"]
        }

    def summary(self) -> dict[str, Any]:
        applied = [d for d in self.layers.values() if d["applied"]]
        return {
            "method": self.method,
            "allocation": self.allocation,
            "layers_factorized": len(applied),
            "layers_left_whole": len(self.layers) - len(applied),
            "params_before": sum(d["params_before"] for d in self.layers.values()),
            "params_after": sum(
                d["params_after"] if d["applied"] else d["params_before"]
                for d in self.layers.values()
            ),
            **({"target": self.target} if self.target else {}),
            "layers": self.layers,
        }


def factorize_(
    model: nn.Module,
    config: FactorizeConfig,
    calibration: Batches | None = None,
    example_inputs: Sequence[Any] | None = None,
) -> FactorizeResult:
    """Factorize ``model``'s layers in place (arXiv 1404.0736, 2403.07378, 1511.06530).

    Raises:
        ConfigError: no layer to factorize, a rank larger than a layer allows, a target that
            cannot be reached (a latency target's error names the reachable R), ``whitened`` or
            ``allocation="sensitivity"`` without calibration batches, or the speed check / a MAC
            or latency target without example inputs. The model is then untouched.
    """
    facts = _facts(model, config, calibration, example_inputs)
    unit = config.target_ratio()[0] if config.target is not None else "params"
    by_latency = config.latency_target  # ranks already estimated faster, at its batch size
    result = FactorizeResult(config.method, config.allocation)
    ranks = _ranks(model, facts, config, (list(calibration or []), example_inputs), result)
    replacements: dict[str, nn.Module] = {}
    for name, layer in facts.items():
        decision = result.layers.setdefault(name, {})
        decision.update({"kind": config.layer_kind, "ranks": ranks[name], "applied": False,
                         "params_before": layer.cost(None, "params"),
                         "params_after": layer.cost(ranks[name], "params")})  # fmt: skip
        if ranks[name] is None:
            decision.setdefault("reason", "the allocation keeps it dense")
            continue
        if not by_latency and layer.cost(ranks[name], unit) >= layer.cost(None, unit):
            decision["reason"] = f"no saving: ranks {ranks[name]} cost as much {unit} as dense"
            continue
        factorized = _factorized(layer, config.method, decision)
        if config.check_speed and not by_latency and not _faster(layer, factorized, decision):
            continue
        decision["applied"] = True
        replacements[name] = factorized
    if config.target is not None and not by_latency:
        result.target = _target_met(facts, ranks, replacements, config)
    with untouched_on_failure(model):
        for name, module in replacements.items():
            model.set_submodule(name, module)
    return result


def _ranks(
    model: nn.Module,
    facts: dict[str, LayerFacts],
    config: FactorizeConfig,
    data: tuple[Batches, Sequence[Any] | None],
    result: FactorizeResult,
) -> Mapping[str, list[int] | None]:
    """Ranks per layer (None: dense) by the config's rule; the one place that decides it."""
    calibration, example_inputs = data
    if config.latency_target:
        assert example_inputs is not None
        return _latency_ranks(model, facts, config, (calibration, example_inputs), result)
    if config.allocation == "sensitivity":
        unit, kept = config.kept_share()
        scans = cost_scans(facts, unit)
        budget = kept * sum(scan.dense_cost for scan in scans.values())
        return _scanned(model, facts, config, calibration, (scans, budget), result)
    return _choose_ranks(facts, config)


def _target_met(
    facts: dict[str, LayerFacts],
    ranks: Mapping[str, list[int] | None],
    applied: dict[str, nn.Module],
    config: FactorizeConfig,
) -> dict[str, Any]:
    """The share of the targeted layers' cost kept: the goal and what the applied layers give
    (less is removed than asked where the speed check kept a layer whole)."""
    unit, goal = config.kept_share()
    dense = sum(layer.cost(None, unit) for layer in facts.values())
    kept = sum(
        layer.cost(ranks[name] if name in applied else None, unit) for name, layer in facts.items()
    )
    return {"unit": unit, "kept_goal": round(goal, 6), "kept": round(kept / dense, 6)}


def _facts(
    model: nn.Module,
    config: FactorizeConfig,
    calibration: Batches | None,
    example_inputs: Sequence[Any] | None,
) -> dict[str, LayerFacts]:
    layers = {n: LayerFacts(n, m) for n, m in candidates(model, config).items()}
    what = "Conv2d with a kernel > 1x1" if config.method in ("tucker2", "cp") else "Linear"
    if not layers:
        raise ConfigError(f"factorize {config.method}: no {what} layer matches targets/ignore")
    needs_inputs = config.check_speed or (config.target or "").startswith(("macs", "latency"))
    if needs_inputs and example_inputs is None:
        raise ConfigError("factorize: check_speed, macs and latency targets need example_inputs")
    if config.method == "whitened" and not calibration:
        raise ConfigError("factorize whitened: pass calibration batches (the inputs it whitens by)")
    if config.allocation == "sensitivity" and not calibration:
        raise ConfigError(
            "factorize allocation=sensitivity: pass calibration batches (the scan measures the "
            "output error on them)"
        )
    if example_inputs is not None:
        observe(model, layers, [example_inputs], gram=False)
    if config.method == "whitened":
        observe(model, layers, list(calibration or []), gram=True)
    for layer in layers.values():
        fill_spectra(layer, config.method)
    return layers


def _choose_ranks(facts: dict[str, LayerFacts], config: FactorizeConfig) -> dict[str, list[int]]:
    if config.rank is not None:
        for name, layer in facts.items():
            if config.rank > min(layer.max_ranks()):
                raise ConfigError(
                    f"rank {config.rank} is larger than layer {name} allows (at most "
                    f"{min(layer.max_ranks())}, its smaller dimension); lower rank or ignore it"
                )
        return {name: [config.rank] * len(layer.spectra) for name, layer in facts.items()}
    if config.effective_energy is not None:
        return {n: layer.ranks_for_energy(config.effective_energy) for n, layer in facts.items()}
    return _ranks_for_target(facts, *config.kept_share())


def _scanned(
    model: nn.Module,
    facts: dict[str, LayerFacts],
    config: FactorizeConfig,
    calibration: Batches,
    goal: tuple[dict[str, LayerScan], float],
    result: FactorizeResult,
) -> dict[str, list[int] | None]:
    """Scan each layer alone at ``config.scan_keep`` of its cost (a rung of its ladder in
    ``scans``), then allocate ``budget`` (of the layers' summed cost) among them."""
    scans, budget = goal

    def build(layer: LayerFacts, ranks: list[int]) -> nn.Module:
        return _factorized(layer, config.method, {"kind": config.layer_kind, "ranks": ranks})

    scan_layers(model, facts, build, calibration, config.scan_keep, scans)
    for name, scan in scans.items():
        result.layers.setdefault(name, {})["sensitivity"] = [
            {k: p[k] for k in ("keep", "ranks", "damage")} for p in scan.points
        ]
    return allocate(scans, budget)


def _latency_ranks(
    model: nn.Module,
    facts: dict[str, LayerFacts],
    config: FactorizeConfig,
    data: tuple[Batches, Sequence[Any]],
    result: FactorizeResult,
) -> dict[str, list[int] | None]:
    """Ranks meeting ``latency=R``: every layer estimated dense and at a ladder of ranks at the
    batch size (``latency.py``), the budget the rest of the model leaves, then one energy level
    or the sensitivity allocation over the rungs faster than dense."""
    calibration, example_inputs = data
    kind = config.layer_kind
    size, source = config.latency_batch_size, config.resolved_latency_source
    estimator = LatencyEstimator(source)
    model_s = estimator.seconds(model, at_batch(example_inputs, size))
    times = {name: layer_latency(layer, kind, estimator, size) for name, layer in facts.items()}
    kept = config.kept_share()[1]
    budget = check_reachable(times, model_s, kept, f"at batch {size} ({source})")
    scans = {name: t.scan() for name, t in times.items()}
    if config.allocation == "sensitivity":
        ranks = _scanned(model, facts, config, calibration, (scans, budget), result)
    else:
        ranks = allocate_by_energy(facts, scans, budget)
    estimate, figures = estimate_after(times, ranks, model_s, size)
    for name, layer_figures in figures.items():
        result.layers.setdefault(name, {}).update(layer_figures)
    result.target = {"unit": "latency", "kept_goal": kept, "kept": round(estimate / model_s, 6),
                     "batch_size": size, "source": source,
                     "dense_model_ms": round(model_s * 1e3, 4)}  # fmt: skip
    return ranks


def _ranks_for_target(facts: dict[str, LayerFacts], unit: str, kept: float) -> dict[str, list[int]]:
    """One energy level for all layers, the highest whose total cost meets the target (layers
    that would not save stay dense at their dense cost)."""
    dense = sum(layer.cost(None, unit) for layer in facts.values())
    budget = kept * dense

    def total(energy: float) -> float:
        return sum(
            min(layer.cost(layer.ranks_for_energy(energy), unit), layer.cost(None, unit))
            for layer in facts.values()
        )

    low, high = 0.0, 1.0
    if total(1e-9) > budget:
        raise ConfigError(
            f"target {unit}={1.0 - kept:g} cannot be reached by factorizing these layers (rank 1 "
            f"everywhere keeps {total(1e-9) / dense:.2f} of their {unit}); lower the target"
        )
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (middle, high) if total(middle) <= budget else (low, middle)
    return {name: layer.ranks_for_energy(low) for name, layer in facts.items()}


def _factorized(layer: LayerFacts, method: str, decision: dict[str, Any]) -> nn.Module:
    module = layer.module
    raw = module.weight
    assert isinstance(raw, torch.Tensor)
    weight = raw.detach()
    new: Any = build_factorized(module, decision).to(weight.device, weight.dtype)
    w = weight.float().cpu()
    with torch.no_grad():
        if method == "tucker2":
            first, core, last = primitives.tucker2(w, *decision["ranks"])
            tensors = [first[:, :, None, None], core, last[:, :, None, None]]
        elif method == "cp":
            first, vertical, horizontal, last = primitives.cp(w, decision["ranks"][0])
            tensors = [first[:, :, None, None], vertical[:, None, :, None],
                       horizontal[:, None, None, :], last[:, :, None, None]]  # fmt: skip
        else:
            rank = decision["ranks"][0]
            if method == "whitened":
                assert layer.gram is not None
                up, down = primitives.whitened_svd(w, layer.gram, rank)
            else:
                up, down = primitives.truncated_svd(w, rank)
            tensors = [down, up]
        for part, tensor in zip(new, tensors, strict=True):
            part.weight.copy_(tensor)
        bias = getattr(module, "bias", None)
        if bias is not None:
            new[-1].bias.copy_(bias.detach())
    return new.train(module.training)


def _faster(layer: LayerFacts, factorized: nn.Module, decision: dict[str, Any]) -> bool:
    """Time both on the layer's sample input; record the medians; True if factorized is faster."""
    assert layer.sample is not None
    dense_ms, new_ms = _median_ms(layer.module, layer.sample), _median_ms(factorized, layer.sample)
    decision["latency_ms"] = {"dense": round(dense_ms, 4), "factorized": round(new_ms, 4)}
    if new_ms >= dense_ms:
        decision["reason"] = (
            f"measured slower: {new_ms:.4f} ms factorized vs {dense_ms:.4f} ms dense "
            f"(batch of the example inputs); left whole"
        )
        return False
    return True


def _median_ms(module: nn.Module, sample: torch.Tensor, repeats: int = 25) -> float:
    """Median milliseconds of one call (the device synchronised around each)."""
    from torchslim.evaluate.latency import measure_latency

    stats = measure_latency(lambda: module(sample), 5, repeats, device=sample.device)
    return float(stats.median)

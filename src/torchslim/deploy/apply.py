"""``deploy``: static W8A8 on real int8 kernels, the backend chosen by measurement.

Every available candidate (ONNX Runtime U8S8/S8S8, OpenVINO on NNCF's and on ONNX Runtime's
QDQ graphs, torch PT2E x86-inductor) is built from the same calibration batches, checked
against the fp32 model (top-1 agreement and cosine on the calibration data: one that disagrees
is rejected), timed interleaved with fp32 eager at the requested batch size; the few fastest are
then re-timed each loaded from its files alone in its own process (``timing="isolated"``, as a
user runs them), and the fastest there is kept; ``DeployedModel.decision`` records every
candidate's figures and why. With ``DeployConfig(precision="bf16")`` the candidates are instead
the fp32 graph compiled by OpenVINO in bf16, checked and timed the same way.
"""

from __future__ import annotations

import copy
import functools
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from torchslim._machine import cpu_features, cpu_model, int8_products_saturate
from torchslim.benchmark import BenchmarkConfig, compare
from torchslim.deploy import onnxruntime_backend, openvino_backend, torch_backend
from torchslim.deploy._isolated import FP32, finalists, isolation_plan, race_figures, time_isolated
from torchslim.deploy._onnx import excluded_nodes, export_onnx, input_names
from torchslim.deploy._runtime import Candidate, Feeds, missing_module, require, to_numpy
from torchslim.deploy.config import PIP_EXTRAS, DeployConfig, DeployError
from torchslim.deploy.model import DeployedModel
from torchslim.evaluate.size import parameter_count
from torchslim.quantize.observers import CalibrationError

Calibration = list[tuple[torch.Tensor, ...]]


def checked_calibration(batches: Sequence[Any]) -> Calibration:
    """Calibration batches as tuples of float tensors; empty, NaN/Inf or ragged data raises
    CalibrationError naming the batch."""
    if batches is None or len(batches) == 0:
        raise CalibrationError(
            "deploy needs calibration batches and got none; pass e.g. "
            "entry.calibration_batches(16) (tuples of input tensors)."
        )
    checked: Calibration = []
    for index, batch in enumerate(batches):
        inputs = (batch,) if isinstance(batch, torch.Tensor) else tuple(batch)
        if not inputs or not all(isinstance(x, torch.Tensor) for x in inputs):
            raise CalibrationError(
                f"calibration batch {index} is not a tensor or tuple of tensors."
            )
        for x in inputs:
            if x.numel() == 0:
                raise CalibrationError(f"calibration batch {index} is empty: {tuple(x.shape)}.")
            if x.is_floating_point() and not bool(torch.isfinite(x).all()):
                raise CalibrationError(
                    f"calibration batch {index} contains NaN or Inf values "
                    f"({int((~torch.isfinite(x)).sum())} of {x.numel()}); clean the data first."
                )
        if checked and len(inputs) != len(checked[0]):
            raise CalibrationError(
                f"calibration batch {index} has {len(inputs)} inputs, "
                f"batch 0 has {len(checked[0])}."
            )
        checked.append(tuple(x.detach().cpu() for x in inputs))
    return checked


def deploy(
    model: nn.Module,
    calibration_batches: Sequence[Any],
    config: DeployConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> DeployedModel:
    """Quantize ``model`` (weights and activations int8, static) and run it on a real backend.

    Args:
        model: an fp32 CNN/MLP; never modified (a copy is exported).
        calibration_batches: tuples of input tensors (or tensors), e.g.
            ``entry.calibration_batches(16)``; also the data the candidates are checked on.
        config: backends, settings and acceptance thresholds (default ``DeployConfig()``).
        progress: called with a line naming each stage as it starts (e.g. a status display).

    Returns:
        The fastest accepted candidate as a :class:`DeployedModel`.

    Raises:
        CalibrationError: empty or non-finite calibration data.
        BackendUnavailableError: the one backend asked for is not installed.
        DeployError: no candidate could be built or none agrees with fp32.
    """
    config = config or DeployConfig()
    say = progress or (lambda line: None)
    started = time.perf_counter()
    calibration = checked_calibration(calibration_batches)
    reference = copy.deepcopy(model).eval()
    for backend in config.backends_to_try() if config.backend != "auto" else ():
        require(backend)
    say("exporting and building the candidates")
    with tempfile.TemporaryDirectory(prefix="torchslim-deploy-") as tmp:
        candidates, failed, skipped = _build_all(reference, calibration, config, Path(tmp))
        artifacts = {c.name: {n: p.read_bytes() for n, p in c.files.items()} for c in candidates}
    say(f"checking {len(candidates)} candidates against fp32")
    checks = _check_all(reference, candidates, calibration, config)
    accepted = [c for c in candidates if _accepted(checks[c.name], config)]
    if not accepted:
        raise DeployError(
            f"no deployment candidate is usable: failed to build {failed or 'none'}; "
            f"disagreeing with fp32 {checks or 'none'}; not installed {skipped or 'none'}. "
            f"Thresholds: top-1 agreement >= {config.min_top1_agreement}, cosine >= "
            f"{config.min_cosine} (DeployConfig). Built for CPU features "
            f"{_feature_names(config)}."
        )
    say(f"timing {len(accepted)} accepted candidates in this process")
    timings = _measure(reference, accepted, calibration, config)
    plan = isolation_plan(config, len(accepted), time.perf_counter() - started)
    isolated: dict[str, dict[str, float]] = {}
    race = finalists(accepted, timings, plan.finalists) if plan.finalists > 1 else []
    if len(race) > 1:
        say(f"re-timing {len(race)} finalists, each in its own process")
        inputs = measuring_inputs(calibration, config.batch_size)
        isolated, broken = time_isolated(reference, race, artifacts, inputs, config, plan.instances)
        failed |= {name: f"failed in its own process: {why}" for name, why in broken.items()}
    timed_alone = [c for c in accepted if c.name in isolated]
    if timed_alone:
        chosen = min(timed_alone, key=lambda c: isolated[c.name]["median_ms"])
    else:
        chosen = min(accepted, key=lambda c: timings[c.name]["median_ms"])
    decision = _decision(chosen, candidates, checks, (timings, isolated), failed | skipped, config)
    decision["isolated_timing"] = plan.to_dict()
    return DeployedModel(chosen, artifacts[chosen.name], decision, parameter_count(model))


def _check_all(
    reference: nn.Module,
    candidates: list[Candidate],
    calibration: Calibration,
    config: DeployConfig,
) -> dict[str, dict[str, float | str]]:
    """Each candidate's agreement with fp32; one that still runs an ignored layer in int8
    fails with why (``config.ignore``: those layers must stay in floating point)."""
    check_data = first_samples(calibration, config.agreement_samples)
    with torch.inference_mode():
        expected = [reference(*batch).float() for batch in check_data]
    checks = {c.name: agreement(expected, c, check_data) for c in candidates}
    # ONNX Runtime's graphs are read back node by node; OpenVINO renames nodes as it compiles,
    # but cannot run int8 without Q/DQ (ORT's graphs) and NNCF refuses an ignored scope that
    # matches nothing
    for c in (c for c in candidates if c.backend == "onnxruntime"):
        quantized = [n for n in c.settings.get("kept_fp32", []) if not _in_fp32(n, c.fp32_ops)]
        if quantized:
            checks[c.name] = {"error": f"runs ignored layer node(s) {quantized} in int8"}
    return checks


def _in_fp32(node: str, fp32_ops: list[str]) -> bool:
    """Whether ``node`` (or a part a backend split it into, ``<node>/...``) is listed in fp32."""
    names = (name for op in fp32_ops for name in op.split(" ", 1)[-1].split(","))
    return any(name == node or name.startswith(node + "/") for name in names)


def _build_all(
    model: nn.Module, calibration: Calibration, config: DeployConfig, workdir: Path
) -> tuple[list[Candidate], dict[str, str], dict[str, str]]:
    """Every candidate of the backends to try; failures and missing backends with reasons."""
    wanted = config.backends_to_try()
    skipped = {b: f"not installed ({PIP_EXTRAS[b]})" for b in wanted if missing_module(b)}
    usable = [b for b in wanted if b not in skipped]
    candidates: list[Candidate] = []
    failed: dict[str, str] = {}
    if {"onnxruntime", "openvino"} & set(usable):
        fp32_path = workdir / "fp32.onnx"
        export_onnx(model, calibration[0], fp32_path)
        if config.precision == "bf16":  # OpenVINO alone (DeployConfig checks it)
            return (*openvino_backend.build_bf16(fp32_path, config, workdir), skipped)
        excluded, weighted = excluded_nodes(fp32_path, _checked_ignore(model, config))
        feeds: Feeds = [
            dict(zip(input_names(len(b)), to_numpy(b), strict=True)) for b in calibration
        ]
        qdq, qdq_failed = onnxruntime_backend.build(fp32_path, feeds, config, workdir, excluded)
        failed |= qdq_failed
        if "onnxruntime" in usable:
            candidates += qdq
        if "openvino" in usable:
            built, ov_failed = openvino_backend.build(
                fp32_path, feeds, config, workdir, qdq, tuple(weighted)
            )
            candidates, failed = candidates + built, failed | ov_failed
        for candidate in candidates if weighted else []:
            candidate.settings["kept_fp32"] = weighted
    if "torch" in usable and config.ignore:
        failed["torch-pt2e-x86-inductor"] = "cannot keep DeployConfig.ignore layers in fp32"
    elif "torch" in usable:
        try:
            candidates.append(torch_backend.build(model, calibration, config, workdir))
        except Exception as error:  # reported in the decision; other backends still compete
            failed["torch-pt2e-x86-inductor"] = f"{type(error).__name__}: {str(error)[:300]}"
    return candidates, failed, skipped


def _checked_ignore(model: nn.Module, config: DeployConfig) -> tuple[str, ...]:
    """``config.ignore``, every name checked against the model's modules (DeployError)."""
    names = {name for name, _ in model.named_modules() if name}
    unknown = [name for name in config.ignore if name not in names]
    if unknown:
        raise DeployError(
            f"DeployConfig.ignore names no module of this model: {unknown}; its modules: "
            f"{sorted(names)[:20]}"
        )
    return config.ignore


def _feature_names(config: DeployConfig) -> str:
    """The ISA flags the candidates were built for, and what they implied for int8 weights."""
    features = config.features()
    names = [name for name, present in features.items() if present] or ["none known"]
    bits = "7-bit (reduced range: no VNNI)" if int8_products_saturate(features) else "8-bit"
    return f"{', '.join(names)}; int8 weights {bits}"


def first_samples(calibration: Calibration, count: int) -> Calibration:
    """The calibration batches cut to their first ``count`` samples in all."""
    kept: Calibration = []
    for batch in calibration:
        if count <= 0:
            break
        kept.append(tuple(x[:count] for x in batch))
        count -= batch[0].shape[0]
    return kept


def agreement(
    expected_outputs: list[torch.Tensor], candidate: Candidate, batches: Calibration
) -> dict[str, float | str]:
    """Top-1 agreement (classifier outputs) and mean per-sample cosine vs the fp32 outputs."""
    agree = total = 0
    cosines: list[torch.Tensor] = []
    try:
        with torch.inference_mode():
            for batch, expected in zip(batches, expected_outputs, strict=True):
                actual = candidate.runtime(*batch).float().reshape(expected.shape)
                cosines.append(F.cosine_similarity(expected.flatten(1), actual.flatten(1), dim=1))
                if expected.ndim == 2 and expected.shape[1] > 1:
                    agree += int((expected.argmax(1) == actual.argmax(1)).sum())
                    total += expected.shape[0]
    except Exception as error:  # a runtime that crashes on real data is rejected, with why
        return {"error": f"{type(error).__name__}: {str(error)[:300]}"}
    cosine = torch.cat(cosines).nan_to_num(-1.0).mean().item()
    return {"top1_agreement": agree / total if total else 1.0, "cosine": cosine}


def _accepted(check: dict[str, float | str], config: DeployConfig) -> bool:
    if "error" in check:
        return False
    return (
        float(check["top1_agreement"]) >= config.min_top1_agreement
        and float(check["cosine"]) >= config.min_cosine
    )


def measuring_inputs(calibration: Calibration, batch_size: int) -> tuple[torch.Tensor, ...]:
    """The first ``batch_size`` calibration samples (cycled if there are fewer)."""
    columns = [torch.cat([b[i] for b in calibration]) for i in range(len(calibration[0]))]
    count = columns[0].shape[0]
    index = torch.arange(batch_size) % count
    return tuple(column[index].contiguous() for column in columns)


def _measure(
    reference: nn.Module, accepted: list[Candidate], calibration: Calibration, config: DeployConfig
) -> dict[str, dict[str, float]]:
    """Median/p90 ms of every accepted candidate and fp32 eager, interleaved, same inputs."""
    inputs = measuring_inputs(calibration, config.batch_size)
    variants: dict[str, Callable[[], Any]] = {"torch-fp32-eager": lambda: reference(*inputs)}
    for candidate in accepted:
        variants[candidate.name] = functools.partial(candidate.runtime, *inputs)
    bench = BenchmarkConfig(
        warmup=config.warmup, rounds=config.rounds, threads=config.threads, max_seconds=5.0
    )
    return race_figures(compare(variants, FP32, bench))


def _decision(
    chosen: Candidate,
    candidates: list[Candidate],
    checks: dict[str, dict[str, float | str]],
    measured: tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]],
    not_built: dict[str, str],
    config: DeployConfig,
) -> dict[str, Any]:
    """Every candidate's checks and timings (``measured``: the in-process race, and the
    isolated re-timing of the finalists, empty if none) and why ``chosen`` won."""
    timings, isolated = measured
    table: dict[str, Any] = {}
    for c in candidates:
        accepted = _accepted(checks[c.name], config)
        table[c.name] = {
            "backend": c.backend,
            "accepted": accepted,
            **checks[c.name],
            **timings.get(c.name, {}),
        }
        if c.name in isolated:
            table[c.name]["isolated"] = isolated[c.name]
    final = isolated if chosen.name in isolated else timings
    where = "each in its own process" if final is isolated else "in one process"
    fp32 = final["torch-fp32-eager"]
    ranked = sorted((t["median_ms"], n) for n, t in final.items() if n != "torch-fp32-eager")
    runner_up = f"; next {ranked[1][1]} at {ranked[1][0]:.3f} ms" if len(ranked) > 1 else ""
    mine = final[chosen.name]
    reason = (
        f"{chosen.name}: fastest of {len(ranked)} accepted candidate(s) timed {where} at batch "
        f"{config.batch_size} with {config.threads} threads: {mine['median_ms']:.3f} ms median "
        f"vs {fp32['median_ms']:.3f} ms fp32 eager ({mine['speedup_vs_fp32_eager']:.2f}x)"
        f"{runner_up}"
    )
    return {
        "chosen": chosen.name,
        "reason": reason,
        "batch_size": config.batch_size,
        "threads": config.threads,
        "fp32_eager": fp32,
        "timing": where,
        "candidates": table,
        "not_built": not_built,
        "config": config.to_dict(),
        "cpu": cpu_record(config),
    }


def cpu_record(config: DeployConfig) -> dict[str, Any]:
    """The CPU the candidates were built for: its features (detected, or given by
    ``DeployConfig.cpu_features``), torch's kernel level, and the int8 choices they imply."""
    features = config.features()
    return {
        "model": cpu_model(),
        "features": features,
        "features_source": "detected" if config.cpu_features is None else "DeployConfig",
        "detected_features": cpu_features(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "int8_products_saturate": int8_products_saturate(features),
    }

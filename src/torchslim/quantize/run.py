"""Quantizing a model for ``torchslim quantize``: deployed on a real backend, cast, or simulated.

The command (``torchslim.commands.quantize``) validates the flags and calls ``run_scheme``.
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from torchslim.quantize._deploy_flags import DeployFlags, deploy_fields, flags_record
from torchslim.quantize.schemes import Scheme

TEXT_TASKS = ("sentence-embedding",)


def _apply_method(model: nn.Module, method: str, batches: list[Any]) -> dict[str, Any]:
    """Run GPTQ or AWQ on the fake-quant ``model``; a summary for the JSON details."""
    import time

    from torchslim.quantize.awq import awq_
    from torchslim.quantize.gptq import gptq_

    if method == "rtn":
        return {"method": "rtn"}
    start = time.perf_counter()
    report = (awq_ if method == "awq" else gptq_)(model, batches)
    key = "loss_awq" if method == "awq" else "loss_gptq"
    ratios = sorted(v[key] / max(v["loss_nearest"], 1e-30) for v in report.values())
    return {
        "method": method,
        "seconds": round(time.perf_counter() - start, 2),
        "groups" if method == "awq" else "layers": len(report),
        "loss_ratio_vs_rtn_median": ratios[len(ratios) // 2] if ratios else None,
    }


def run_scheme(
    entry: Any,
    scheme: Scheme,
    out: Path,
    calibration_batches: int,
    deploy: str,
    allow_slower: bool,
    options: dict[str, Any],
) -> Any:
    """Quantize ``entry``'s model with ``scheme``, write the artifact, measure before/after."""
    from torchslim.errors import ConfigError

    fp32 = entry.load()
    # bf16 CNNs run on OpenVINO's bf16 kernels where it can; text encoders keep the cast path
    bf16_cnn = scheme.cast_format == "bfloat16" and entry.task not in TEXT_TASKS
    fallback = None
    if bf16_cnn and deploy in ("auto", "openvino"):
        deployed, fallback = _deploy_bf16(
            entry, fp32, (calibration_batches, options), deploy, allow_slower
        )
        if deployed is not None:
            return _report_deployed(entry, fp32, scheme, out, deployed, options)
    flags = options["deploy_flags"]
    if flags.budget_s is not None and not (bf16_cnn or scheme.execution == "deployed"):
        raise ConfigError(f"--deploy-budget: {entry.name} in {scheme.name} deploys nothing")
    if scheme.execution == "cast":
        return _run_cast(entry, fp32, scheme, out, allow_slower, options, fallback)
    if scheme.execution == "deployed" and deploy != "none":
        return _run_deployed(entry, fp32, scheme, out, calibration_batches, deploy, options)
    return _run_simulated(entry, fp32, scheme, out, calibration_batches, options)


def _deploy_bf16(
    entry: Any,
    fp32: nn.Module,
    sizes: tuple[int, dict[str, Any]],
    backend: str,
    allow_slower: bool,
) -> tuple[Any, str | None]:
    """bf16 on OpenVINO's bf16 kernels (``DeployConfig(precision="bf16")``) and None, or None
    and why not where ``backend`` is "auto" and OpenVINO or bf16 hardware is missing: the torch
    cast path then measures bf16 and refuses it if slower.

    Raises:
        FormatSlowerError: the deployed bf16 model measured slower than fp32 eager and
            ``allow_slower`` is off.
        DeployError: ``backend`` is "openvino" and the CPU has no bf16 compute.
    """
    from torchslim.deploy import DeployConfig, DeployError, FormatSlowerError
    from torchslim.deploy import deploy as deploy_static
    from torchslim.deploy.formats import KEEP_MARGIN

    calibration_batches, options = sizes  # batches to check agreement on; batch size, flags
    batches = entry.calibration_batches(calibration_batches)
    flags = options["deploy_flags"]
    fields = {k: v for k, v in deploy_fields(fp32, flags).items() if k in ("threads", "budget_s")}
    config = DeployConfig(
        precision="bf16", backend=backend, batch_size=options["batch_size"], **fields
    )
    try:
        deployed = deploy_static(fp32, batches, config, progress=_stage_printer())
    except DeployError as error:
        if backend == "openvino":
            raise
        return None, f"OpenVINO bf16 not used: {error}"
    chosen = deployed.decision["candidates"][deployed.candidate]
    race = chosen.get("isolated", chosen)  # its time and the fp32 time of the same race
    if race["speedup_vs_fp32_eager"] < KEEP_MARGIN and not allow_slower:
        raise FormatSlowerError(
            f"bf16 on OpenVINO ({deployed.candidate}) measured {race['median_ms']:.3f} ms "
            f"against {race['fp32_eager_median_ms']:.3f} ms for fp32 eager in the same race: "
            f"not {KEEP_MARGIN:.2f}x faster, so refused; pass --allow-slower to keep it"
        )
    return deployed, None


def _report_deployed(
    entry: Any, fp32: nn.Module, scheme: Scheme, out: Path, deployed: Any, options: dict
) -> Any:
    """Save ``deployed`` to ``out`` and measure it against ``fp32`` (the command's outcome)."""
    from torchslim._compress import measure_before_after
    from torchslim.pipeline.steps.deploy import DeployOptions

    if "flags" in options:  # what each flag asked and what the deployment used, in manifest
        deployed.decision["quantize_flags"] = options.pop("flags")
    details = {"scheme": scheme.name, "execution": "deployed", "deploy": deployed.manifest()}
    outcome = measure_before_after(
        entry, fp32, deployed, f"quantize {scheme.name}", out, {**options, "details": details}
    )
    precision = "bf16" if scheme.cast_format == "bfloat16" else "int8"
    return write_artifact(out, entry, deployed, outcome, ("deploy", DeployOptions(precision)))


def write_artifact(
    out: Path,
    entry: Any,
    model: Any,
    outcome: Any,
    stage: tuple[str, Any] | None,
    extra_files: dict[str, Path] | None = None,
) -> Any:
    """Write the one artifact format (``torchslim.load`` and every command read it): ``stage``
    is the (step, options) that made ``model`` from the original, None for a plain cast."""
    from torchslim.pipeline.artifact import write_pipeline_artifact
    from torchslim.pipeline.recipe import Recipe, Stage

    stages = (Stage(*stage),) if stage is not None else ()
    records = [{"step": s.step, "options": s.to_dict(), "record": {}} for s in stages]
    outcome = dataclasses.replace(outcome, details={**outcome.details, "stages": records})
    write_pipeline_artifact(out, entry, model, Recipe(stages), outcome, extra_files)
    return outcome


def _run_deployed(
    entry: Any,
    fp32: nn.Module,
    scheme: Scheme,
    out: Path,
    calibration_batches: int,
    backend: str,
    options: dict[str, Any],
) -> Any:
    import torch

    batch_size = options.get("batch_size", 1)
    flags: DeployFlags = options["deploy_flags"]
    if entry.task in TEXT_TASKS:
        from torchslim.deploy.text_config import TextDeployConfig
        from torchslim.deploy.text_int8 import deploy_text_int8

        _refuse_for_text(flags)
        threads = flags.threads or torch.get_num_threads()
        config = TextDeployConfig(batch_sizes=(batch_size,), threads=threads)
        deployed: Any = deploy_text_int8(fp32, entry, backend, config)
        record = {"threads": {"requested": flags.threads, "used": threads}}
    else:
        from torchslim.deploy import DeployConfig
        from torchslim.deploy import deploy as deploy_static

        fields = deploy_fields(fp32, flags)
        batches = entry.calibration_batches(calibration_batches)
        deploy_config = DeployConfig(backend=backend, batch_size=batch_size, **fields)
        deployed = deploy_static(fp32, batches, deploy_config, progress=_stage_printer())
        record = flags_record(flags, fields)
    return _report_deployed(entry, fp32, scheme, out, deployed, {**options, "flags": record})


def _refuse_for_text(flags: DeployFlags) -> None:
    """A text encoder's deployment quantizes activations at run time with every Linear in
    int8: no observer, no per-layer choice, no weight format, no budget (ConfigError)."""
    from torchslim.errors import ConfigError

    given = {
        "--observer": flags.observer != "auto",
        "--ignore": bool(flags.ignore),
        "--weight-format": flags.weight_format is not None,
        "--deploy-budget": flags.budget_s is not None,
    }
    used = [name for name, present in given.items() if present]
    if used:
        raise ConfigError(
            f"{', '.join(used)}: a text encoder deploys dynamic int8 (activations quantized at "
            "run time, every Linear int8, candidates timed per batch size): these do not "
            "apply; drop them, or use --deploy none to simulate with them."
        )


def _stage_printer() -> Any:
    """A progress callback printing each deploy stage to stderr with the elapsed time."""
    import time

    from rich.console import Console

    console, started = Console(stderr=True), time.perf_counter()

    def say(line: str) -> None:
        console.print(f"[dim]deploy {time.perf_counter() - started:5.1f} s: {line}[/dim]")

    return say


def _run_cast(
    entry: Any,
    fp32: nn.Module,
    scheme: Scheme,
    out: Path,
    allow_slower: bool,
    options: dict,
    bf16_fallback: str | None = None,
) -> Any:
    """torch's own cast to bf16/fp16, measured first (``bf16_fallback``: why OpenVINO's bf16
    was not used, recorded in the details)."""
    from torchslim._compress import measure_before_after
    from torchslim.deploy import CastModel, check_format

    assert scheme.cast_format is not None
    example = entry.example_inputs(options.get("batch_size", 1))
    on_slower = "warn" if allow_slower else "raise"  # FormatSlowerError names the slowdown
    import torch

    threads = options.get("threads") or torch.get_num_threads()
    check = check_format(fp32, example, scheme.cast_format, on_slower=on_slower, threads=threads)

    cast = CastModel(copy.deepcopy(fp32), getattr(torch, scheme.cast_format))
    details = {"scheme": scheme.name, "execution": "cast", "format_check": check.to_dict()}
    if bf16_fallback is not None:
        details["bf16_fallback"] = bf16_fallback
    outcome = measure_before_after(
        entry, fp32, cast, f"quantize {scheme.name}", out, {**options, "details": details}
    )
    return write_artifact(out, entry, cast.model, outcome, None)  # weights in the cast dtype


def _run_simulated(
    entry: Any,
    fp32: nn.Module,
    scheme: Scheme,
    out: Path,
    calibration_batches: int,
    options: dict[str, Any],
) -> Any:
    from torchslim._compress import measure_before_after
    from torchslim.pipeline.steps.quantize import QuantizeOptions
    from torchslim.quantize import quantize_
    from torchslim.quantize.schemes import dequantized_copy
    from torchslim.quantize.storage import save_quantized

    assert scheme.config is not None
    fake = copy.deepcopy(fp32)
    batches = entry.calibration_batches(calibration_batches)
    result = quantize_(fake, scheme.config, calibration=batches)
    method = _apply_method(fake, options.get("method", "rtn"), batches)
    metrics = entry.evaluate(fake.eval())
    details = {
        "scheme": scheme.name,
        "execution": "simulated",
        "note": "metric of the fake-quant model; size of the packed weights; latency of the "
        "dequantized fp32 model (no low-precision kernel here): not a low-precision speed-up",
        "quantize": result.to_dict(),
        "method": method,
    }
    outcome = measure_before_after(
        entry, fp32, dequantized_copy(fake), f"quantize {scheme.name}", out,
        {**options, "details": details},
    )  # fmt: skip
    stage = ("quantize", QuantizeOptions(scheme=scheme.name, method=options.get("method", "rtn")))
    with tempfile.TemporaryDirectory() as tmp:
        packed = save_quantized(fake, Path(tmp) / "model.quantized.safetensors")
        after = dataclasses.replace(
            outcome.after, metrics=metrics, size_bytes=packed.stat().st_size
        )
        outcome = dataclasses.replace(outcome, after=after)
        return write_artifact(out, entry, fake, outcome, stage, {packed.name: packed})

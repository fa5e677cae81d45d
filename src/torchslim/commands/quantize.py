"""``torchslim quantize``: quantize a model, run it for real where a backend can, measure both.

Light to import (torch loads when the command runs); the work is in ``torchslim.quantize.run``."""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from torchslim._cli_options import (
    DataOption,
    DeviceOption,
    InputDtypeOption,
    InputShapeOption,
    ModelArgument,
    SeqLenOption,
    ThreadsOption,
    VocabSizeOption,
    WeightsOption,
    model_options,
)

if TYPE_CHECKING:
    from torchslim.quantize._deploy_flags import DeployFlags
    from torchslim.quantize.schemes import Scheme

DEPLOY_CHOICES = ("auto", "onnxruntime", "openvino", "torch", "none")
METHODS = ("rtn", "gptq", "awq")  # how int-weight schemes choose their codes


def quantize_command(
    model: ModelArgument,
    out: Annotated[Path, typer.Option(help="Artifact directory to write.")],
    scheme: Annotated[str, typer.Option(help="w8a8, w8-dynamic, w4a8, w4-weight, bf16, ...")] = (
        "w8a8"
    ),
    observer: Annotated[str, typer.Option(help="auto|minmax|moving_average|percentile|mse|kl")] = (
        "auto"
    ),
    weight_format: Annotated[
        str | None, typer.Option(help="Override the scheme's weight format, e.g. int4-g32.")
    ] = None,
    ignore: Annotated[list[str] | None, typer.Option(help="Layer name or re:<regex>.")] = None,
    calibration_batches: Annotated[int, typer.Option(min=1)] = 16,
    deploy: Annotated[str, typer.Option(help="auto|onnxruntime|openvino|torch|none")] = "auto",
    batch_size: Annotated[int, typer.Option(min=1, help="Batch size of the latency.")] = 1,
    threads: ThreadsOption = None,
    repeats: Annotated[int, typer.Option(min=3, help="Timed forward passes per side.")] = 20,
    allow_slower: Annotated[bool, typer.Option(help="Keep bf16/fp16 even if slower.")] = False,
    method: Annotated[
        str,
        typer.Option(
            help="rtn|gptq|awq: how int weights get their codes (weight-only or w4a8-token)."
        ),
    ] = "rtn",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    device: DeviceOption = "cpu",
    weights: WeightsOption = None,
    input_shape: InputShapeOption = None,
    input_dtype: InputDtypeOption = None,
    vocab_size: VocabSizeOption = None,
    seq_len: SeqLenOption = None,
    data: DataOption = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace a torchslim artifact already at --out.")
    ] = False,
    deploy_budget: Annotated[
        float | None,
        typer.Option(
            min=1.0,
            help="Seconds the deploy race may take (default 20: a quick race); more lets more "
            "finalists be re-timed each in its own process.",
        ),
    ] = None,
) -> None:
    """Quantize MODEL, deploy it on the fastest real backend here, and print before/after.

    Example: torchslim quantize fashion-resnet20 --scheme w8a8 --out r20-int8
    """
    from torchslim._devices import check_device
    from torchslim._outdir import check_out
    from torchslim.commands._render import note_synthetic_data, print_outcome
    from torchslim.errors import ConfigError
    from torchslim.quantize._deploy_flags import DeployFlags
    from torchslim.quantize.run import run_scheme
    from torchslim.quantize.schemes import get_scheme
    from torchslim.zoo.options import require_layers, resolve_model

    check_out(out, overwrite)  # before any work: never a user's folder, never after minutes
    if deploy not in DEPLOY_CHOICES:
        raise ConfigError(f"--deploy {deploy!r}; allowed: {', '.join(DEPLOY_CHOICES)}")
    chosen = get_scheme(scheme)
    if chosen.config is not None:
        overrides: dict[str, Any] = {"observer": observer, "ignore": tuple(ignore or ())}
        overrides["escalate"] = None  # re-derived from the observer (part of "auto" only)
        if weight_format:
            overrides["weight"] = weight_format
        chosen = dataclasses.replace(chosen, config=dataclasses.replace(chosen.config, **overrides))
    check_method(method, chosen, deploy)
    check_device(device)
    check_deploy_device(device, chosen, deploy)
    flags = DeployFlags(observer, tuple(ignore or ()), weight_format, threads, deploy_budget)
    check_flags_apply(chosen, deploy, flags)
    options_ = model_options(weights, input_shape, input_dtype, vocab_size, seq_len, data)
    entry = resolve_model(model, options_)
    require_layers(entry, "quantize")
    note_synthetic_data(entry)
    options: dict[str, Any] = {"batch_size": batch_size, "threads": threads, "repeats": repeats}
    options |= {"method": method, "deploy_flags": flags, "device": device}
    # Backends (NNCF, ORT) print progress to stdout: with --json stdout carries only the JSON.
    with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
        outcome = run_scheme(entry, chosen, out, calibration_batches, deploy, allow_slower, options)
    print_outcome(outcome, as_json)


def check_deploy_device(device: str, scheme: Scheme, deploy: str) -> None:
    """Refuse ``--device`` other than cpu where the result runs in a CPU runtime.

    Raises:
        ConfigError: a deployed (ONNX Runtime / OpenVINO / torch x86 INT8) scheme on a GPU.
    """
    from torchslim.errors import ConfigError

    if device != "cpu" and scheme.execution == "deployed" and deploy != "none":
        raise ConfigError(
            f"--device {device}: --scheme {scheme.name} deploys to CPU runtimes (ONNX Runtime, "
            "OpenVINO, torch x86 INT8 kernels); use --device cpu, or --deploy none to measure "
            "the fake-quant model on the device"
        )


def check_flags_apply(scheme: Scheme, deploy: str, flags: DeployFlags) -> None:
    """Refuse a flag the chosen path cannot act on (a cast has no observer, layers or weight
    format; only a deployment races within a budget).

    Raises:
        ConfigError: naming the flag and what it needs.
    """
    from torchslim.errors import ConfigError

    bf16_deploys = scheme.cast_format == "bfloat16" and deploy in ("auto", "openvino")
    deploys = (scheme.execution == "deployed" and deploy != "none") or bf16_deploys
    if flags.budget_s is not None and not deploys:
        raise ConfigError(
            f"--deploy-budget applies to a deployment; --scheme {scheme.name} with --deploy "
            f"{deploy} deploys nothing (use --scheme w8a8 or bf16 with --deploy auto)."
        )
    given = {
        "--observer": flags.observer != "auto",
        "--ignore": bool(flags.ignore),
        "--weight-format": flags.weight_format is not None,
    }
    if scheme.config is None and any(given.values()):
        used = ", ".join(name for name, present in given.items() if present)
        raise ConfigError(
            f"{used}: --scheme {scheme.name} casts the whole model to {scheme.cast_format} and "
            "has no observer, per-layer choice or weight format; drop them or choose an int "
            "scheme (e.g. w8a8)."
        )


def check_method(method: str, scheme: Scheme, deploy: str = "none") -> None:
    """Refuse ``--method`` gptq/awq where it has no meaning: int weights whose activations stay
    in float or are quantized at run time (w4a8-token), see ``weight_method_problem``.

    Raises:
        ConfigError: an unknown method, or gptq/awq with static activations or a non-int
            weight format.
    """
    from torchslim.errors import ConfigError, did_you_mean
    from torchslim.quantize.config import weight_method_problem
    from torchslim.quantize.schemes import SCHEMES

    if method not in METHODS:
        raise ConfigError(
            f"--method {method!r}; allowed: {', '.join(METHODS)}.{did_you_mean(method, METHODS)}"
        )
    if method == "rtn":
        return
    config = scheme.config
    problem = "it is a cast" if config is None else weight_method_problem(config, method)
    if problem is None and scheme.execution == "deployed" and deploy != "none":
        problem = f"it deploys on a runtime that quantizes the weights itself (--deploy {deploy})"
    if problem is not None:
        usable = [
            name for name, s in SCHEMES.items()
            if s.config is not None and s.execution == "simulated"
            and weight_method_problem(s.config, method) is None
        ]  # fmt: skip
        raise ConfigError(
            f"--method {method} needs an int weight scheme with activations in float or "
            f"quantized at run time; --scheme {scheme.name} is not one ({problem}). Use one of "
            f"{', '.join(usable)} (optionally with --weight-format int4-g128), or --method rtn."
        )

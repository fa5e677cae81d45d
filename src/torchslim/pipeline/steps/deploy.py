"""The ``deploy`` step: the model on a real low-precision runtime of this machine.

``precision: int8`` builds static W8A8 candidates (ONNX Runtime, OpenVINO+NNCF, torch x86),
refuses those that disagree with fp32, and keeps the fastest measured here; ``bf16`` runs the
float graph on OpenVINO's bf16 kernels. Transformer encoders go through the text deploy path.
It must be the last stage: what it returns is a runtime graph, not a module to transform.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from torch import nn

from torchslim.errors import ConfigError, did_you_mean
from torchslim.pipeline.registry import Step, StepContext, StepResult, register_step

BACKENDS = ("auto", "onnxruntime", "openvino", "torch")
PRECISIONS = ("int8", "bf16")
TEXT_TASKS = ("sentence-embedding",)


@dataclass(frozen=True)
class DeployOptions:
    """``precision`` int8 | bf16; ``backend`` auto | onnxruntime | openvino | torch;
    ``calibration_batches`` (also the data candidates are checked on); ``batch_size`` at which
    candidates are timed."""

    precision: str = "int8"
    backend: str = "auto"
    calibration_batches: int = 16
    batch_size: int = 1

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("precision", self.precision, PRECISIONS),
            ("backend", self.backend, BACKENDS),
        ):
            if value not in allowed:
                hint = did_you_mean(value, allowed)
                raise ConfigError(f"{name} {value!r}; allowed: {', '.join(allowed)}.{hint}")
        if self.calibration_batches < 1 or self.batch_size < 1:
            raise ConfigError("calibration_batches and batch_size must be >= 1")


def run_deploy(model: nn.Module, options: DeployOptions, context: StepContext) -> StepResult:
    from torchslim.prune.unstructured import folded_copy
    from torchslim.quantize.modules import quant_modules

    if quant_modules(model):
        raise ConfigError(
            "deploy received fake-quant layers from an earlier quantize stage: deploy quantizes "
            "for its runtime itself. Remove the quantize stage (deploy's precision: int8 is W8A8) "
            "or the deploy stage (to keep the simulated format)."
        )
    float_model = folded_copy(model).eval()
    entry = context.entry
    deployed: Any
    if entry.task in TEXT_TASKS:
        deployed = _deploy_text(float_model, options, context)
    else:
        from torchslim.deploy import DeployConfig
        from torchslim.deploy import deploy as deploy_static

        config = DeployConfig(
            precision=options.precision, backend=options.backend, batch_size=options.batch_size,
        )  # fmt: skip
        if context.threads:
            config = dataclasses.replace(config, threads=context.threads)
        batches = entry.calibration_batches(options.calibration_batches)
        deployed = deploy_static(float_model, batches, config)
    return StepResult({"deploy": deployed.manifest()}, model=deployed)


def _deploy_text(model: nn.Module, options: DeployOptions, context: StepContext) -> Any:
    from torchslim.deploy.text_config import TextDeployConfig
    from torchslim.deploy.text_int8 import deploy_text_int8

    if options.precision != "int8":
        raise ConfigError(f"text models deploy in int8 only, not {options.precision}")
    config = TextDeployConfig(batch_sizes=(options.batch_size,))
    return deploy_text_int8(model, context.entry, options.backend, config)


register_step(
    Step(
        "deploy",
        DeployOptions,
        run_deploy,
        "real INT8 / bf16 on this machine's runtimes",
        final=True,
    )
)

"""Real low-precision execution: static W8A8 on ONNX Runtime, OpenVINO or torch inductor int8
kernels, the backend chosen by measurement; format capability checks (bf16, fp16, fp8); the
INT8 transformer path (``deploy_text_int8``, imported on first use)."""

from __future__ import annotations

import importlib
from typing import Any

from torchslim.deploy.apply import checked_calibration, deploy
from torchslim.deploy.config import BackendUnavailableError, DeployConfig, DeployError
from torchslim.deploy.formats import CastModel, FormatCheck, FormatSlowerError, check_format
from torchslim.deploy.model import DeployedModel, load_deployed

# The text path pulls in transformers-side code: loaded when one of its names is first used.
_LAZY = {
    "deploy_text_int8": "torchslim.deploy.text_int8",
    "TextDeployConfig": "torchslim.deploy.text_config",
    "DeployedTextModel": "torchslim.deploy.text_artifact",
    "load_text_int8": "torchslim.deploy.text_artifact",
    "Int8Linear": "torchslim.deploy.torch_int8",
    "Int8MMConfig": "torchslim.deploy.torch_int8",
    "to_int8_mm": "torchslim.deploy.torch_int8",
    "save_int8_mm": "torchslim.deploy.torch_int8",
    "load_int8_mm": "torchslim.deploy.torch_int8",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BackendUnavailableError",
    "CastModel",
    "DeployConfig",
    "DeployError",
    "DeployedModel",
    "DeployedTextModel",
    "FormatCheck",
    "FormatSlowerError",
    "Int8Linear",
    "Int8MMConfig",
    "TextDeployConfig",
    "check_format",
    "checked_calibration",
    "deploy",
    "deploy_text_int8",
    "load_deployed",
    "load_int8_mm",
    "load_text_int8",
    "save_int8_mm",
    "to_int8_mm",
]

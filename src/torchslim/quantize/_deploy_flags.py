"""How ``quantize``'s flags act on the deployed path (a real int8 backend builds the model, not
torchslim's fake-quant): each flag becomes a ``DeployConfig`` field, or is refused with what
would work. Never dropped: a flag accepted and unused would make the numbers silently wrong."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from torchslim.errors import ConfigError

# --observer -> ONNX Runtime's calibration method ("auto": its default, min-max).
CALIBRATION_OF_OBSERVER = {
    "auto": "minmax",
    "minmax": "minmax",
    "percentile": "percentile",
    "kl": "entropy",
}
# --weight-format -> DeployConfig.weight_granularity (int8 symmetric: what the backends run).
GRANULARITY_OF_FORMAT = {"channel": "channel", "tensor": "tensor"}
# What --deploy-budget defaults to: a quick race (the in-process timing decides unless two
# finalists fit in their own processes); a larger budget re-times more of them alone.
DEFAULT_BUDGET_S = 20.0


@dataclass(frozen=True)
class DeployFlags:
    """The flags as the user gave them (None / () / "auto": not given)."""

    observer: str = "auto"
    ignore: tuple[str, ...] = ()
    weight_format: str | None = None
    threads: int | None = None
    budget_s: float | None = None


def deploy_fields(model: nn.Module, flags: DeployFlags) -> dict[str, Any]:
    """``DeployConfig`` keyword arguments carrying every flag.

    Raises:
        ConfigError: an observer or weight format the backends cannot honour, or an
            ``--ignore`` pattern that matches no module of ``model``; each names what would.
    """
    import torch

    return {
        "calibration_method": _calibration(flags.observer),
        "weight_granularity": _granularity(flags.weight_format),
        "ignore": ignored_modules(model, flags.ignore),
        "threads": flags.threads or torch.get_num_threads(),
        "budget_s": flags.budget_s or DEFAULT_BUDGET_S,
    }


def _calibration(observer: str) -> str:
    if observer not in CALIBRATION_OF_OBSERVER:
        raise ConfigError(
            f"--observer {observer} does not apply to the deployed path: the backend calibrates "
            f"activations itself, with {', '.join(CALIBRATION_OF_OBSERVER)} (kl: entropy). "
            f"Use one of those, or --deploy none to simulate with --observer {observer}."
        )
    return CALIBRATION_OF_OBSERVER[observer]


def _granularity(weight_format: str | None) -> str:
    if weight_format is None:
        return "auto"
    from torchslim.quantize.formats import QuantFormat

    parsed = QuantFormat.parse(weight_format)
    if (parsed.kind, parsed.bits, parsed.symmetric) != ("int", 8, True) or (
        parsed.granularity not in GRANULARITY_OF_FORMAT
    ):
        raise ConfigError(
            f"--weight-format {weight_format} does not apply to the deployed path: the int8 "
            "backends run symmetric int8 weights per channel or per tensor (--weight-format "
            f"int8 or int8-tensor). Use --deploy none to simulate {weight_format}."
        )
    return GRANULARITY_OF_FORMAT[parsed.granularity]


def ignored_modules(model: nn.Module, patterns: tuple[str, ...]) -> tuple[str, ...]:
    """The module names ``patterns`` (names or ``re:<regex>``) select, outermost only.

    Raises:
        ConfigError: a pattern that selects no module.
    """
    from torchslim.errors import did_you_mean
    from torchslim.quantize.config import matches

    names = [name for name, _ in model.named_modules() if name]
    selected: list[str] = []
    for pattern in patterns:
        found = [name for name in names if matches(name, pattern)]
        if not found:
            raise ConfigError(
                f"--ignore {pattern!r} matches no layer of this model."
                f"{did_you_mean(pattern, names)}"
            )
        selected += [name for name in found if name not in selected]
    return tuple(
        name for name in selected if not any(name.startswith(f"{other}.") for other in selected)
    )


def flags_record(flags: DeployFlags, fields: dict[str, Any]) -> dict[str, Any]:
    """What each flag asked and what the deployment used, for the manifest."""
    return {
        "observer": {
            "requested": flags.observer,
            "calibration_method": fields["calibration_method"],
        },
        "weight_format": {
            "requested": flags.weight_format,
            "weight_granularity": fields["weight_granularity"],
        },
        "ignore": {"requested": list(flags.ignore), "modules_kept_fp32": list(fields["ignore"])},
        "threads": {"requested": flags.threads, "used": fields["threads"]},
        "deploy_budget_s": {"requested": flags.budget_s, "used": fields["budget_s"]},
    }

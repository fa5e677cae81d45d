"""What a deployment may use and how it is checked: one frozen, validated config; its errors."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

from torchslim.errors import ConfigError, TorchslimError, did_you_mean, reject_unknown_keys

T = TypeVar("T")

BACKENDS = ("onnxruntime", "openvino", "torch")
ACTIVATION_TYPES = ("auto", "uint8", "int8")
WEIGHT_GRANULARITIES = ("auto", "channel", "tensor")
# What "auto" builds by default: the backends whose result is a file (model.onnx). The torch
# PT2E program lives only in its process and compiles per batch size; opt in with
# candidates=(..., "torch") or backend="torch".
DEFAULT_CANDIDATES = ("onnxruntime", "openvino")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
TIMINGS = ("isolated", "in-process")
# "int8": static W8A8 (every backend); "bf16": the fp32 graph run in bfloat16 by OpenVINO's
# CPU plugin (AVX512-BF16 / AMX kernels), refused on CPUs without bf16 compute.
PRECISIONS = ("int8", "bf16")
# The pip extra that installs each backend (pyproject.toml [project.optional-dependencies]).
PIP_EXTRAS = {
    "onnxruntime": "pip install 'torchslim' (onnxruntime is a core dependency)",
    "openvino": "pip install 'torchslim[openvino]' (openvino + nncf)",
    "torch": "pip install 'torchslim[torchao]' (torchao, for the PT2E x86-inductor path)",
}


class DeployError(TorchslimError):
    """A model that cannot be deployed as asked (export failed, candidates all rejected, ...)."""


class BackendUnavailableError(DeployError, ImportError):
    """The requested backend's package is not installed; the message names the pip extra."""


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {allowed}, got {value!r}")


def _check_range(name: str, value: Any, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ConfigError(f"{name} must be a number in [{low}, {high}], got {value!r}")


@dataclass(frozen=True)
class DeployConfig:
    """Static W8A8 (or bf16) deployment: which backends to try, their settings, and the
    acceptance checks.

    Args:
        precision: "int8" (static W8A8, the default) or "bf16": no quantization; OpenVINO
            compiles the fp32 graph (weights stored in fp16) with bf16 inference precision,
            the only CPU runtime here with bf16 convolution kernels (torch eager bf16 measured
            1.35x at best on resnet20). Needs ``backend`` "auto" or "openvino", and a CPU with
            bf16 compute (DeployError otherwise: the plugin would silently run f32).
        backend: "auto" (build every available candidate, check, measure, keep the fastest),
            or one of "onnxruntime", "openvino", "torch" (PT2E x86-inductor).
        candidates: the backends "auto" considers (those not installed are skipped and listed);
            default onnxruntime and openvino, whose result is a saveable model.onnx. Add
            "torch" to let PT2E x86-inductor compete (in-process only: it cannot be saved, and
            it compiles once per batch size).
        activation_type: ONNX Runtime activations "uint8" (U8S8), "int8" (S8S8) or "auto"
            (build both and let the measurement decide). Weights are always int8.
        weight_granularity: int8 weight scales per output "channel", per "tensor", or "auto"
            (ONNX Runtime builds both and the measurement decides).
        calibration_method: ONNX Runtime's activation-range method: minmax, entropy, percentile.
        batch_size: batch size at which "auto" measures latency.
        threads: intra-op threads of every runtime (and of torch while measuring); default
            torch's count, which follows ``OMP_NUM_THREADS``.
        single_thread: when ``threads`` > 1, also build the ONNX Runtime sessions and the
            static-shape OpenVINO compilations with 1 thread and let the measurement decide: a
            small batch often runs faster on one core than split over two (no second thread
            to wake per op; measured 20-30 % faster at batch 1 on the Fashion ResNets here).
        min_top1_agreement: a candidate whose top-1 agrees with fp32 on fewer calibration
            samples than this fraction is rejected, in [0, 1].
        min_cosine: a candidate whose outputs' mean cosine similarity to fp32 is lower is
            rejected, in [0, 1].
        agreement_samples: calibration samples the candidates are checked on (the first ones;
            >= 1); fp32 runs on them once.
        rounds: timed interleaved rounds per candidate when "auto" measures (>= 3).
        warmup: untimed calls per candidate before timing (>= 1).
        timing: "isolated" (default): after the in-process race, the ``finalists`` fastest
            candidates are re-timed each loaded from its files in its own process, as a user
            runs them, and the fastest there wins; "in-process": the race alone decides
            (quicker; runtimes sharing a process disturb each other's thread pools).
        finalists: candidates re-timed in isolation (>= 1; those within 1.5x of the best).
        instances: worker processes per finalist in the isolated timing (>= 1); their samples
            are pooled, so one process's luck (thread placement, memory layout: 5-20 % here)
            does not decide between close candidates.
        cpu_features: the ISA flags the candidates are built for (names from
            ``torchslim._machine.ISA_FLAGS``, e.g. ``("avx2", "fma")`` for an AMD Zen 2), or
            None (default): this machine's. It decides which int8 graphs can be exact here: on
            x86 without VNNI, int8 weights use 7 bits (reduced range) so the VPMADDUBSW
            kernels do not saturate; and whether bf16 is native. Tests set it to exercise
            every CPU kind on any machine.
        budget_s: seconds the deployment aims to take, or None (default): no limit, the
            race as configured. With a budget, fewer finalists (or none: the in-process race
            decides) are re-timed in their own processes when the time left would not fit
            them (in (0, 86400]).
        ignore: torch module names (as ``model.named_modules()`` lists them) kept in floating
            point: their ONNX nodes are excluded from quantization in every candidate, and a
            candidate that still runs one of them in int8 is rejected.
    """

    backend: str = "auto"
    precision: str = "int8"
    candidates: tuple[str, ...] = DEFAULT_CANDIDATES
    activation_type: str = "auto"
    weight_granularity: str = "auto"
    calibration_method: str = "minmax"
    batch_size: int = 1
    threads: int = field(default_factory=lambda: _default_threads())
    single_thread: bool = True
    min_top1_agreement: float = 0.97
    min_cosine: float = 0.98
    agreement_samples: int = 256
    rounds: int = 30
    warmup: int = 5
    timing: str = "isolated"
    finalists: int = 4
    instances: int = 2
    cpu_features: tuple[str, ...] | None = None
    ignore: tuple[str, ...] = ()
    budget_s: float | None = None

    def __post_init__(self) -> None:
        _check_choice("backend", self.backend, ("auto", *BACKENDS))
        _check_choice("timing", self.timing, TIMINGS)
        _check_choice("precision", self.precision, PRECISIONS)
        if self.precision == "bf16" and self.backend not in ("auto", "openvino"):
            raise ConfigError(
                f"precision='bf16' runs on OpenVINO only (backend 'auto' or 'openvino'), got "
                f"backend={self.backend!r}; torch's own bf16 is the cast path "
                "(torchslim.deploy.check_format / --scheme bf16 --deploy none)"
            )
        if not isinstance(self.candidates, tuple) or not self.candidates:
            raise ConfigError(f"candidates must be a non-empty tuple of {BACKENDS}")
        for name in self.candidates:
            _check_choice("candidates entry", name, BACKENDS)
        _check_choice("activation_type", self.activation_type, ACTIVATION_TYPES)
        _check_choice("calibration_method", self.calibration_method, CALIBRATION_METHODS)
        _check_choice("weight_granularity", self.weight_granularity, WEIGHT_GRANULARITIES)
        minimums = {
            "batch_size": 1,
            "threads": 1,
            "agreement_samples": 1,
            "rounds": 3,
            "warmup": 1,
            "finalists": 1,
            "instances": 1,
        }
        for name, low in minimums.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
        if not isinstance(self.single_thread, bool):
            raise ConfigError(f"single_thread must be True or False, got {self.single_thread!r}")
        _check_range("min_top1_agreement", self.min_top1_agreement, 0.0, 1.0)
        _check_range("min_cosine", self.min_cosine, 0.0, 1.0)
        _check_features(self.cpu_features)
        if self.budget_s is not None:
            _check_range("budget_s", self.budget_s, 1e-3, 86400.0)
        if self.ignore and (self.precision == "bf16" or self.backend == "torch"):
            raise ConfigError(
                f"ignore={self.ignore!r} keeps layers out of int8; precision={self.precision!r} "
                f"with backend={self.backend!r} has no int8 layer to keep out (bf16) or cannot "
                "exclude layers (torch PT2E): use precision='int8' on onnxruntime or openvino"
            )
        if not isinstance(self.ignore, tuple) or not all(
            isinstance(name, str) and name for name in self.ignore
        ):
            raise ConfigError(f"ignore must be a tuple of module names, got {self.ignore!r}")

    def backends_to_try(self) -> tuple[str, ...]:
        """The backends this config builds: the one named, or the "auto" candidates (OpenVINO
        alone for bf16)."""
        if self.precision == "bf16":
            return ("openvino",)
        return self.candidates if self.backend == "auto" else (self.backend,)

    def features(self) -> dict[str, bool]:
        """The ISA features the candidates are built for: ``cpu_features``, or detected."""
        from torchslim._machine import features_from_flags

        return features_from_flags(self.cpu_features)

    def thread_options(self) -> tuple[int, ...]:
        """Intra-op thread counts the candidates are built with: ``threads`` first, then 1."""
        return (self.threads, 1) if self.single_thread and self.threads > 1 else (self.threads,)

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DeployConfig:
        return config_from_dict(cls, values)


def _default_threads() -> int:
    import torch

    return torch.get_num_threads()


def _check_features(features: tuple[str, ...] | None) -> None:
    from torchslim._machine import ISA_FLAGS

    if features is None:
        return
    if not isinstance(features, tuple):
        raise ConfigError(f"cpu_features must be None or a tuple of {ISA_FLAGS}, got {features!r}")
    for name in features:
        if name not in ISA_FLAGS:
            raise ConfigError(
                f"cpu_features entry {name!r} is not a known ISA flag; allowed: {ISA_FLAGS}"
                f"{did_you_mean(str(name), ISA_FLAGS)}"
            )


def config_to_dict(config: Any) -> dict[str, Any]:
    """A frozen config dataclass as a plain dict (tuples become lists, for JSON/YAML)."""
    values = dataclasses.asdict(config)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def config_from_dict(cls: type[T], values: dict[str, Any]) -> T:
    """Build ``cls`` from :func:`config_to_dict` output; unknown keys raise with a hint."""
    reject_unknown_keys(cls, values)
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

"""How a transformer text encoder is deployed in int8: one frozen, validated config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torchslim.deploy.config import TIMINGS, config_from_dict, config_to_dict
from torchslim.errors import ConfigError

TEXT_BACKENDS = ("onnxruntime", "openvino", "torch")
# Every candidate deploy_text_int8 can build, by backend (what backend="auto" tries).
TEXT_CANDIDATES = {
    "onnxruntime": (
        "onnxruntime-fused-dynamic",
        "onnxruntime-fused-noattention-dynamic",
        "onnxruntime-dynamic",
    ),
    "openvino": (
        "openvino-nncf-bf16",
        "openvino-nncf-f32",
        "openvino-nncf-bf16-2streams",
        "openvino-nncf-bf16-static",  # compiled once per input shape met (first 8 shapes)
        "openvino-nncf-f32-static",
    ),
    "torch": ("torch-int-mm",),  # torch._int_mm Linear layers (torchslim.deploy.torch_int8)
}


@dataclass(frozen=True)
class TextDeployConfig:
    """INT8 deployment of a text encoder (BERT-like), chosen by measurement.

    Args:
        backend: "auto" (build every installed candidate, check, measure, keep the fastest), or
            "onnxruntime" / "openvino" / "torch" (only that backend's candidates; "torch" is
            ``torch-int-mm``, the Linear layers on ``torch._int_mm``).
        per_channel: per-output-channel int8 weight scales (per-tensor loses MiniLM's accuracy:
            measured mean cosine 0.957 vs 0.992 with ONNX Runtime dynamic quantization).
        calibration_batches: batches of the zoo entry's calibration data for static
            quantization (NNCF); ignored by dynamic candidates.
        min_cosine: a candidate whose per-sample outputs have a mean cosine similarity to fp32
            below this is rejected, in [0, 1].
        min_speedup: a candidate slower than ``min_speedup`` x torch fp32 eager at any measured
            batch size is rejected (>= 0; 1.0: a "quantized" model slower than fp32 is a trap
            and never handed back; 0 disables the rule, e.g. for tiny test models on a busy
            machine).
        batch_sizes: batch sizes at which candidates are timed (entry inputs only; explicit
            inputs are timed at their own batch size); the score is the geometric mean of the
            fastest-call speed-ups (medians are recorded too).
        threads: intra-op threads of every runtime and of torch while measuring.
        rounds: timed interleaved rounds per candidate and batch size, at most (>= 3).
        seconds_per_candidate: time budget of one candidate's timed calls at one batch size;
            past it the candidate stops being timed once it has 3 samples (> 0). Cheap
            small-batch calls get all ``rounds``, expensive large-batch calls fewer.
        warmup: untimed calls per candidate before timing (>= 1).
        trim_padding: drop trailing all-padding columns (attention_mask == 0 in every row) before
            running. Exact only for outputs that ignore padded positions (a pooled embedding);
            checked at deployment, refused otherwise.
        timing: "isolated" (default): after the in-process race, the ``finalists`` best
            accepted candidates (score within 1.5x of the best) are re-timed at every batch
            size, each loaded from its files alone in its own process, and the best score there
            wins; "in-process": the race alone decides (runtimes sharing a process disturb
            each other's thread pools).
        finalists: candidates re-timed in isolation (>= 1).
        instances: worker processes per finalist in the isolated timing (>= 1); their samples
            are pooled, so one process's luck (thread placement, memory layout: 5-20 % here)
            does not decide between close candidates.
    """

    backend: str = "auto"
    per_channel: bool = True
    calibration_batches: int = 8
    min_cosine: float = 0.99
    min_speedup: float = 1.0
    batch_sizes: tuple[int, ...] = (1, 8)
    threads: int = 2
    rounds: int = 20
    seconds_per_candidate: float = 4.0
    warmup: int = 2
    trim_padding: bool = False
    timing: str = "isolated"
    finalists: int = 3
    instances: int = 2

    def __post_init__(self) -> None:
        if self.timing not in TIMINGS:
            raise ConfigError(f"timing must be one of {TIMINGS}, got {self.timing!r}")
        if self.backend not in ("auto", *TEXT_BACKENDS):
            raise ConfigError(
                f"backend must be one of {('auto', *TEXT_BACKENDS)}, got {self.backend!r}"
            )
        for name in ("per_channel", "trim_padding"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be True or False, got {getattr(self, name)!r}")
        minimums = {
            "calibration_batches": 1,
            "threads": 1,
            "rounds": 3,
            "warmup": 1,
            "finalists": 1,
            "instances": 1,
        }
        for name, low in minimums.items():
            _check_int(name, getattr(self, name), low)
        if not isinstance(self.batch_sizes, tuple) or not self.batch_sizes:
            raise ConfigError(f"batch_sizes must be a non-empty tuple, got {self.batch_sizes!r}")
        for size in self.batch_sizes:
            _check_int("batch_sizes entry", size, 1)
        value = self.min_cosine
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            raise ConfigError(f"min_cosine must be a number in [0, 1], got {value!r}")
        value = self.seconds_per_candidate
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1e4:
            raise ConfigError(f"seconds_per_candidate must be a number in (0, 1e4), got {value!r}")
        value = self.min_speedup
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1e3:
            raise ConfigError(f"min_speedup must be a number in [0, 1000), got {value!r}")

    def candidates(self) -> tuple[str, ...]:
        """The candidate names this config builds (installed or not)."""
        backends = TEXT_BACKENDS if self.backend == "auto" else (self.backend,)
        return tuple(name for backend in backends for name in TEXT_CANDIDATES[backend])

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TextDeployConfig:
        return config_from_dict(cls, values)


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")

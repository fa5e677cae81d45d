"""Real int8 Linear layers on ``torch._int_mm`` (int8 x int8 -> int32), no runtime but torch.

``Int8Linear`` holds int8 weights with one symmetric scale per output channel. Its input is
quantized to int8 per token at run time (dynamic, symmetric: one scale per row of the flattened
input) or with one calibrated per-tensor scale (static); ``torch._int_mm`` multiplies, and the
int32 result is rescaled and the bias added in fp32.

Shape rules of ``torch._int_mm`` (torch 2.13): on CPU it takes any m, k, n (checked here for
m = 0..33, k and n down to 1 and odd sizes). On CUDA it needs k and n multiples of 8 and
m > 16; ``Int8Linear`` pads m to 17 rows there, and a layer whose k or n breaks the rule stays
an fp32 ``nn.Linear``, listed in ``Int8MMResult.fp32_layers`` with the reason.
``Int8MMConfig.portable=True`` applies the CUDA rule on CPU too, so a saved model loads on both.

>>> result = to_int8_mm(model)                  # every nn.Linear, dynamic per-token int8 input
>>> save_int8_mm(model, "out")                  # model.safetensors + int8_mm.json, no pickle
>>> load_int8_mm(fresh_fp32_model, "out")       # same layers swapped, weights bit-identical
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchslim._compress import untouched_on_failure
from torchslim._io import (
    atomic_directory,
    load_state_dict_strict,
    load_tensors,
    save_tensors,
    write_json,
)
from torchslim.deploy.config import DeployError
from torchslim.errors import ConfigError, reject_unknown_keys
from torchslim.quantize.calibrate import check_batches
from torchslim.quantize.config import matches
from torchslim.quantize.observers import CalibrationError

QMAX = 127  # symmetric int8: [-127, 127], so -x quantizes to -q
EPS = 1e-12
MANIFEST = "int8_mm.json"
WEIGHTS = "model.safetensors"
FORMAT = "torchslim-int8-mm-v1"
ACTIVATIONS = ("dynamic", "static")
CUDA_MIN_ROWS = 17  # CUDA _int_mm needs m > 16


@dataclass(frozen=True)
class Int8MMConfig:
    """Options of :func:`to_int8_mm`.

    Attributes:
        activation: "dynamic" (per-token scales computed from each input) or "static" (one
            per-tensor scale per layer from calibration data).
        skip: layers left in fp32, by exact name or ``"re:<regex>"``.
        portable: also apply the CUDA kernel's shape rule (in/out features multiples of 8) on
            CPU, so the converted model runs on either device.
    """

    activation: str = "dynamic"
    skip: tuple[str, ...] = ()
    portable: bool = False

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ConfigError(
                f"Int8MMConfig.activation={self.activation!r}; allowed: {ACTIVATIONS}."
            )
        skip = (self.skip,) if isinstance(self.skip, str) else tuple(self.skip)
        if not all(isinstance(p, str) and p for p in skip):
            raise ConfigError(f"Int8MMConfig.skip={self.skip!r}; allowed: layer names/'re:...'.")
        object.__setattr__(self, "skip", skip)
        if not isinstance(self.portable, bool):
            raise ConfigError(f"Int8MMConfig.portable={self.portable!r}; allowed: True, False.")

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "skip": list(self.skip)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Int8MMConfig:
        reject_unknown_keys(cls, values)
        return cls(**values)  # __post_init__ turns a skip list into a tuple


def quantize_weight(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric per-output-channel int8: codes (N, K) int8 and scales (N,) fp32."""
    w = weight.detach().float()  # (N, K)
    scale = w.abs().amax(dim=1).clamp(min=EPS) / QMAX  # (N,)
    codes = torch.round(w / scale[:, None]).clamp(-QMAX, QMAX).to(torch.int8)  # (N, K)
    return codes, scale


def quantize_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric per-row (per-token) int8: codes (M, K) int8 and scales (M, 1) fp32."""
    # max |x| per row in one pass (no |x| temporary), then in-place rounding: fewer passes over
    # the activations, which is what this costs next to the int8 matmul
    absmax = torch.linalg.vector_norm(x, float("inf"), dim=1, keepdim=True)  # (M, 1)
    scale = absmax.clamp_(min=EPS).div_(QMAX)  # (M, 1)
    return _to_codes(x, scale), scale  # (M, K), (M, 1)


def _to_codes(x: Tensor, scale: Tensor) -> Tensor:
    """round(x / scale) clamped to [-127, 127], as int8 (scale broadcasts over x)."""
    return x.div(scale).round_().clamp_(-QMAX, QMAX).to(torch.int8)


def shape_problem(in_features: int, out_features: int, device: str, portable: bool) -> str | None:
    """Why ``torch._int_mm`` cannot run a (in_features -> out_features) layer, or None."""
    if (device == "cuda" or portable) and (in_features % 8 or out_features % 8):
        return (
            f"torch._int_mm on CUDA needs in/out features multiples of 8, got "
            f"{in_features} -> {out_features}"
        )
    probe_rows = CUDA_MIN_ROWS if device == "cuda" else 1
    try:
        a = torch.zeros(probe_rows, in_features, dtype=torch.int8, device=device)
        b = torch.zeros(in_features, out_features, dtype=torch.int8, device=device)
        torch._int_mm(a, b)
    except RuntimeError as error:
        return f"torch._int_mm refused the shape: {str(error).strip()[:200]}"
    return None


class Int8Linear(nn.Module):
    """A Linear layer running ``torch._int_mm``: int8 weights (per-output-channel scales),
    int8 input (per token, or one static scale), fp32 rescale and bias.

    Buffers: ``weight_int8`` (N, K) int8, ``weight_scale`` (N,) fp32, ``bias`` (N,) fp32 or
    None, ``input_scale`` () fp32 (static) or (0,) (dynamic).
    """

    weight_int8: Tensor
    weight_scale: Tensor
    bias: Tensor | None
    input_scale: Tensor

    def __init__(self, in_features: int, out_features: int, bias: bool, static: bool) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer(
            "weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8)
        )
        self.register_buffer("weight_scale", torch.ones(out_features))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self.register_buffer("input_scale", torch.ones(()) if static else torch.ones(0))

    @property
    def static(self) -> bool:
        return self.input_scale.dim() == 0

    @classmethod
    def from_linear(cls, linear: nn.Linear, input_absmax: float | None = None) -> Int8Linear:
        """Quantize ``linear``'s weight; ``input_absmax`` given: static input scale from it."""
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None,
                    input_absmax is not None)  # fmt: skip
        codes, scale = quantize_weight(linear.weight)
        device = linear.weight.device
        layer.weight_int8.copy_(codes)
        layer.weight_scale.copy_(scale)
        if linear.bias is not None and layer.bias is not None:
            layer.bias.copy_(linear.bias.detach().float())
        if input_absmax is not None:
            layer.input_scale.fill_(max(input_absmax, EPS) / QMAX)
        return layer.to(device)

    def forward(self, x: Tensor) -> Tensor:  # x: (..., K)
        shape, dtype = x.shape, x.dtype
        flat = x.reshape(-1, self.in_features).float()  # (M, K)
        if self.static:
            scale = self.input_scale.reshape(1, 1)  # (1, 1)
            codes = _to_codes(flat, scale)  # (M, K)
        else:
            codes, scale = quantize_rows(flat)  # (M, K), (M, 1)
        rows = codes.shape[0]
        if codes.is_cuda and rows < CUDA_MIN_ROWS:  # CUDA kernel needs m > 16
            codes = F.pad(codes, (0, 0, 0, CUDA_MIN_ROWS - rows))
        acc = torch._int_mm(codes, self.weight_int8.t())[:rows]  # (M, N) int32
        out = acc.to(torch.float32).mul_(scale)  # (M, N) * (M, 1)
        if self.bias is not None:
            out = torch.addcmul(self.bias, out, self.weight_scale)  # bias + out * w_scale
        else:
            out = out.mul_(self.weight_scale)  # (M, N) * (N,)
        return out.reshape(*shape[:-1], self.out_features).to(dtype)  # (..., N)

    def extra_repr(self) -> str:
        mode = "static" if self.static else "dynamic per-token"
        return f"{self.in_features} -> {self.out_features}, int8 input {mode}"


@dataclass(frozen=True)
class Int8MMResult:
    """What :func:`to_int8_mm` did: the layers now on ``torch._int_mm``, those left in fp32."""

    config: Int8MMConfig
    int8_layers: tuple[str, ...]
    fp32_layers: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "int8_layers": list(self.int8_layers),
            "fp32_layers": dict(self.fp32_layers),
        }


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def plan_layers(model: nn.Module, config: Int8MMConfig) -> tuple[list[str], dict[str, str]]:
    """(the Linear layers ``torch._int_mm`` can run, the others with the reason)."""
    chosen, fp32 = [], {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        if type(module) is not nn.Linear:  # a subclass may do more than x @ W^T + b
            fp32[name] = f"{type(module).__name__}: a Linear subclass, left as it is"
            continue
        if any(matches(name, p) for p in config.skip):
            fp32[name] = "in Int8MMConfig.skip"
            continue
        device = module.weight.device.type
        problem = shape_problem(module.in_features, module.out_features, device, config.portable)
        if problem:
            fp32[name] = problem
        else:
            chosen.append(name)
    return chosen, fp32


def _input_absmax(model: nn.Module, layers: list[str], batches: list[Any]) -> dict[str, float]:
    """Per-tensor absmax of each layer's input over ``batches`` (float model)."""
    absmax: dict[str, float] = {}

    def hook(name: str) -> Any:
        def observe(_: nn.Module, args: tuple[Any, ...]) -> None:
            value = float(args[0].detach().abs().max())
            absmax[name] = max(absmax.get(name, 0.0), value)

        return observe

    handles = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in layers]
    try:
        with torch.no_grad():
            for batch in check_batches(batches):
                model(*batch)
    finally:
        for handle in handles:
            handle.remove()
    bad = [n for n in layers if not 0 <= absmax.get(n, -1.0) < float("inf")]
    if bad:
        raise CalibrationError(f"layers {bad[:4]} saw no input or NaN/Inf in calibration.")
    return absmax


def to_int8_mm(
    model: nn.Module,
    config: Int8MMConfig | None = None,
    calibration: Iterable[Any] | None = None,
) -> Int8MMResult:
    """Swap every plain ``nn.Linear`` of ``model`` (in place) for an :class:`Int8Linear`.

    Args:
        model: the float model; left exactly as it was if anything fails.
        config: options; :class:`Int8MMConfig` defaults (dynamic, nothing skipped) when None.
        calibration: batches of forward inputs; needed for ``activation="static"``.

    Returns:
        The converted layers and the fp32 ones with their reason (skip list, kernel shape rule).

    Raises:
        CalibrationError: static activations without usable calibration batches.
    """
    config = config or Int8MMConfig()
    with untouched_on_failure(model):
        chosen, fp32 = plan_layers(model, config)
        absmax: dict[str, float] = {}
        if config.activation == "static":
            if calibration is None:
                raise CalibrationError(
                    "Int8MMConfig(activation='static') needs calibration batches; pass "
                    "calibration=entry.calibration_batches(8) or use activation='dynamic'."
                )
            absmax = _input_absmax(model, chosen, list(calibration))
        for name in chosen:
            linear = model.get_submodule(name)
            assert isinstance(linear, nn.Linear)
            _set_submodule(model, name, Int8Linear.from_linear(linear, absmax.get(name)))
    return Int8MMResult(config, tuple(chosen), fp32)


def int8_layers(model: nn.Module) -> dict[str, Int8Linear]:
    """Every :class:`Int8Linear` of ``model`` by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, Int8Linear)}


def int8_manifest(model: nn.Module) -> dict[str, Any]:
    """The JSON description of the int8 layers (what :func:`load_int8_mm` rebuilds)."""
    layers = {
        name: {"in_features": m.in_features, "out_features": m.out_features,
               "bias": m.bias is not None, "static": m.static}
        for name, m in int8_layers(model).items()
    }  # fmt: skip
    return {"format": FORMAT, "layers": layers}


def save_int8_mm(model: nn.Module, out: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``out/model.safetensors`` (int8 weights, scales, the fp32 rest) and
    ``out/int8_mm.json`` atomically; ``extra`` is added to the JSON."""
    with atomic_directory(out) as tmp:
        save_tensors(tmp / WEIGHTS, model.state_dict())
        write_json(tmp / MANIFEST, {**int8_manifest(model), **(extra or {})})
    return Path(out)


def apply_int8_manifest(model: nn.Module, manifest: Mapping[str, Any]) -> None:
    """Swap the Linear layers named in ``manifest`` for empty :class:`Int8Linear` layers."""
    if manifest.get("format") != FORMAT:
        raise DeployError(f"not a {FORMAT} manifest (format={manifest.get('format')!r}).")
    for name, spec in manifest["layers"].items():
        try:
            linear = model.get_submodule(name)
        except AttributeError as error:
            raise DeployError(f"the model has no layer {name!r} named in the manifest") from error
        if not isinstance(linear, nn.Linear) or (linear.in_features, linear.out_features) != (
            spec["in_features"], spec["out_features"],
        ):  # fmt: skip
            raise DeployError(f"layer {name!r} is not a Linear of the manifest's shape {spec}")
        layer = Int8Linear(spec["in_features"], spec["out_features"], spec["bias"], spec["static"])
        _set_submodule(model, name, layer.to(linear.weight.device))


def load_int8_mm(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a directory written by :func:`save_int8_mm` into ``model``, a float model of the
    same architecture (e.g. built from its config); returns it, changed in place."""
    directory = Path(path)
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise DeployError(f"{directory} has no {MANIFEST}; it was not written by save_int8_mm.")
    manifest = json.loads(manifest_path.read_text())
    with untouched_on_failure(model):
        apply_int8_manifest(model, manifest)
        load_state_dict_strict(model, load_tensors(directory / WEIGHTS), str(directory))
    return model

"""Which ``--device`` values torchslim accepts here: decided once, before any work."""

from __future__ import annotations

from torchslim.errors import ConfigError

ALLOWED = "cpu, cuda, cuda:N (N a GPU index) or mps"


def check_device(device: str, option: str = "--device") -> str:
    """Return ``device`` if this machine can run on it.

    Raises:
        ConfigError: naming the value, what is allowed, and whether CUDA/MPS is present here.
    """
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"{option} {device!r} is not a device; use {ALLOWED}.") from None
    if parsed.type == "cpu":
        return device
    if parsed.type == "cuda":
        _check_cuda(device, parsed.index, option)
        return device
    if parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"{option} {device!r}: MPS is not available on this machine.")
        return device
    raise ConfigError(f"{option} {device!r} is not supported by torchslim; use {ALLOWED}.")


def _check_cuda(device: str, index: int | None, option: str) -> None:
    import torch

    if not torch.cuda.is_available():
        why = "this torch is built without CUDA" if torch.version.cuda is None else "no GPU seen"
        raise ConfigError(
            f"{option} {device!r}: CUDA is not available on this machine ({why}); use cpu."
        )
    count = torch.cuda.device_count()
    if index is not None and index >= count:
        raise ConfigError(
            f"{option} {device!r}: this machine has {count} CUDA device(s), "
            f"indices 0 to {count - 1}."
        )

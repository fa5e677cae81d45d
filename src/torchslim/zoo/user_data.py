"""The user's own data (``--data``): read, checked against the model's inputs, split disjointly.

Sources: a folder of images (resized to the input's height and width, scaled to [0, 1]), a
``.npy`` array (read without pickle) or a ``.safetensors`` file (one tensor per model input, in
file order), or a text file for a language model (tokenized with the model's own tokenizer, cut
into windows of the input's sequence length). The last fifth of the samples (at least one) is the
evaluation split; the rest is the calibration split, so calibration never sees an eval sample.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from torchslim.errors import ConfigError, ModelLoadError
from torchslim.zoo._entry import Batch
from torchslim.zoo._inputs import InputSpec

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
MAX_SAMPLES = 4096  # read at most this many samples (images, windows or tensor rows)
EVAL_FRACTION = 5  # one sample in EVAL_FRACTION goes to the evaluation split


@dataclass(frozen=True)
class UserData:
    """Per-input tensors (samples first) of the two disjoint splits, and where they came from."""

    source: Path
    kind: str  # "images" | "tensors" | "text"
    calibration: tuple[torch.Tensor, ...]
    evaluation: tuple[torch.Tensor, ...]

    @property
    def eval_samples(self) -> int:
        return int(self.evaluation[0].shape[0])

    @property
    def calibration_samples(self) -> int:
        return int(self.calibration[0].shape[0])

    def eval_batch(self, batch_size: int, start: int = 0) -> Batch:
        return _rows(self.evaluation, batch_size, start)

    def calibration_batch(self, batch_size: int, index: int) -> Batch:
        return _rows(self.calibration, batch_size, index * batch_size)

    def describe(self) -> str:
        return (
            f"{self.kind} from {self.source}: {self.calibration_samples} calibration and "
            f"{self.eval_samples} evaluation samples (disjoint)"
        )


def _rows(tensors: tuple[torch.Tensor, ...], batch_size: int, start: int) -> Batch:
    count = int(tensors[0].shape[0])
    rows = (torch.arange(batch_size) + start) % count  # cycles when the split is smaller
    return tuple(tensor[rows].clone() for tensor in tensors)


def read_user_data(
    path: Path,
    specs: Sequence[InputSpec],
    tokenize: Callable[[str], list[int]] | None = None,
) -> UserData:
    """Read ``path`` for a model whose inputs are ``specs`` and split it.

    Args:
        path: a folder of images, a ``.npy`` / ``.safetensors`` file, or a ``.txt`` file.
        specs: the model's inputs (shape batch first, dtype).
        tokenize: text -> token ids, for a text file (the model's own tokenizer).

    Raises:
        ConfigError: the data does not fit the inputs (shape, dtype, count), holds NaN/inf, or is
            too small to split; the message says what was expected.
        ModelLoadError: the file cannot be read.
    """
    tensors: tuple[torch.Tensor, ...]
    if path.is_dir():
        tensors, kind = (_read_images(path, specs),), "images"
    elif path.suffix in (".npy", ".safetensors"):
        tensors, kind = read_tensor_file(path), "tensors"
    elif path.suffix in (".txt", ".text", ".md"):
        tensors, kind = (_read_text(path, specs, tokenize),), "text"
    else:
        raise ConfigError(
            f"--data {path}: use a folder of images, a .npy or .safetensors tensor file, or a "
            ".txt text file for a language model"
        )
    tensors = _checked(path, tensors, specs)
    count = int(tensors[0].shape[0])
    if count < 2:
        raise ConfigError(
            f"--data {path} holds {count} sample(s): at least 2 are needed, one for calibration "
            "and one for evaluation"
        )
    n_eval = max(1, count // EVAL_FRACTION)
    calibration = tuple(t[: count - n_eval] for t in tensors)
    evaluation = tuple(t[count - n_eval :] for t in tensors)
    return UserData(path, kind, calibration, evaluation)


def _checked(
    path: Path, tensors: tuple[torch.Tensor, ...], specs: Sequence[InputSpec]
) -> tuple[torch.Tensor, ...]:
    if len(tensors) != len(specs):
        raise ConfigError(
            f"--data {path} holds {len(tensors)} tensor(s) but the model takes {len(specs)} "
            "input(s): store one tensor per input, in the order of the model's arguments"
        )
    checked = []
    for index, (tensor, spec) in enumerate(zip(tensors, specs, strict=True)):
        if tensor.dim() == 0 or tensor.shape[0] == 0:
            raise ConfigError(f"--data {path}: input {index} is empty")
        if tuple(tensor.shape[1:]) != tuple(spec.shape[1:]):
            raise ConfigError(
                f"--data {path}: input {index} has samples of shape {tuple(tensor.shape[1:])}, "
                f"the model takes {tuple(spec.shape[1:])} (from --input-shape {spec.shape}); "
                "samples go along the first dimension"
            )
        if spec.dtype.is_floating_point != tensor.dtype.is_floating_point:
            raise ConfigError(
                f"--data {path}: input {index} is {str(tensor.dtype).removeprefix('torch.')}, "
                f"the model takes {str(spec.dtype).removeprefix('torch.')}"
            )
        if tensor.dtype.is_floating_point:
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                raise ConfigError(
                    f"--data {path}: input {index} holds {bad} NaN/inf value(s); clean the data "
                    "first (calibration on non-finite values gives meaningless scales)"
                )
        checked.append(tensor[:MAX_SAMPLES].to(spec.dtype).contiguous())
    return tuple(checked)


def read_tensor_file(path: Path) -> tuple[torch.Tensor, ...]:
    """The tensors of a ``.npy`` (one) or ``.safetensors`` file (one per input, in file order)."""
    return (_read_npy(path),) if path.suffix == ".npy" else _read_safetensors(path)


def _read_npy(path: Path) -> torch.Tensor:
    import numpy as np

    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"--data {path}: not a readable .npy array ({error})") from error
    if array.dtype.kind not in "fiub":
        raise ConfigError(f"--data {path}: dtype {array.dtype} is not numeric")
    return torch.from_numpy(np.ascontiguousarray(array))


def _read_safetensors(path: Path) -> tuple[torch.Tensor, ...]:
    from torchslim._io import load_tensors

    tensors = load_tensors(path)
    if not tensors:
        raise ConfigError(f"--data {path} holds no tensor")
    return tuple(tensors.values())


def _read_images(path: Path, specs: Sequence[InputSpec]) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    spec = specs[0]
    if len(specs) != 1 or len(spec.shape) != 4 or not spec.dtype.is_floating_point:
        raise ConfigError(
            f"--data {path} is a folder of images: the model must take one float input of shape "
            f"(batch, channels, height, width); it takes {[s.shape for s in specs]}"
        )
    _, channels, height, width = spec.shape
    if channels not in (1, 3):
        raise ConfigError(f"--data {path}: images give 1 or 3 channels, the model takes {channels}")
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:MAX_SAMPLES]
    if not files:
        raise ConfigError(f"--data {path}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    images = []
    for file in files:
        try:
            with Image.open(file) as image:
                pixels = image.convert("L" if channels == 1 else "RGB").resize((width, height))
                data = torch.frombuffer(bytearray(pixels.tobytes()), dtype=torch.uint8)
        except (OSError, UnidentifiedImageError) as error:
            raise ModelLoadError(f"--data: cannot read image {file}: {error}") from error
        images.append(data.view(height, width, channels).permute(2, 0, 1))  # (C, H, W)
    return torch.stack(images).float() / 255.0  # (N, C, H, W) in [0, 1]


def _read_text(
    path: Path, specs: Sequence[InputSpec], tokenize: Callable[[str], list[int]] | None
) -> torch.Tensor:
    spec = specs[0]
    if tokenize is None or len(specs) != 1 or spec.dtype.is_floating_point or len(spec.shape) != 2:
        raise ConfigError(
            f"--data {path} is text: it needs a language model with its tokenizer (a Hugging "
            "Face directory holding tokenizer files) taking one (batch, seq_len) token input"
        )
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        raise ModelLoadError(f"--data {path}: {error}") from error
    ids = torch.tensor(tokenize(text)[: MAX_SAMPLES * spec.shape[1]], dtype=torch.int64)
    seq_len = spec.shape[1]
    windows = ids.numel() // seq_len
    if windows < 2:
        raise ConfigError(
            f"--data {path}: {ids.numel()} tokens make {windows} window(s) of {seq_len}; at "
            "least 2 are needed (one for calibration, one for evaluation): use more text or "
            "a smaller --seq-len"
        )
    return ids[: windows * seq_len].view(windows, seq_len)  # (N, T)

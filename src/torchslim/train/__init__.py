"""The one trainer: seeded, resumable, DDP under torchrun, bf16 autocast only where the hardware
has it."""

from torchslim.train._metrics import read_metrics
from torchslim.train.config import TrainConfig
from torchslim.train.distributed import DistributedContext, init_distributed
from torchslim.train.trainer import (
    NonFiniteLossError,
    Trainer,
    TrainState,
    augment_images,
    cross_entropy_loss,
)

__all__ = [
    "DistributedContext",
    "NonFiniteLossError",
    "TrainConfig",
    "TrainState",
    "Trainer",
    "augment_images",
    "cross_entropy_loss",
    "init_distributed",
    "read_metrics",
]

"""torch.distributed for the trainer: one process per rank, started by ``torchrun``.

Under ``torchrun --nproc-per-node N`` the environment holds ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; the process group is initialised from them
(``env://``) with nccl on CUDA and gloo on CPU. Outside torchrun everything here is a no-op and the
trainer runs as one process, unchanged.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from torchslim.errors import ConfigError


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: its rank among ``world_size`` and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, metrics and progress."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of a scalar over ranks (itself when alone)."""
        if not self.enabled:
            return value
        total = value.detach().clone().to(self.device)
        dist.all_reduce(total)
        return total / self.world_size

    def average_gradients(self, parameters: list[torch.nn.Parameter]) -> None:
        """All-reduce the gradients of parameters DDP does not own (e.g. a loss's adapters)."""
        if not self.enabled:
            return
        for parameter in parameters:
            if parameter.grad is not None:
                dist.all_reduce(parameter.grad)
                parameter.grad /= self.world_size

    def broadcast_parameters(self, parameters: list[torch.nn.Parameter]) -> None:
        """Give every rank rank 0's values (DDP does this for the model, not for the loss)."""
        if not self.enabled:
            return
        with torch.no_grad():
            for parameter in parameters:
                dist.broadcast(parameter.data, src=0)

    def broadcast(self, payload: object) -> object:
        """Rank 0's ``payload`` on every rank."""
        if not self.enabled:
            return payload
        box = [payload]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def under_torchrun() -> bool:
    """True when the launcher set the env:// variables of a multi-process run."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def backend_for(device: torch.device) -> str:
    """nccl for CUDA devices, gloo for everything else."""
    return "nccl" if device.type == "cuda" else "gloo"


def init_distributed(device: str | torch.device = "cpu") -> DistributedContext:
    """Join the torchrun process group (once) and return this rank's context.

    On CUDA each rank takes ``cuda:LOCAL_RANK``; on CPU every rank stays on the CPU.
    """
    requested = torch.device(device)
    if not under_torchrun():
        return DistributedContext(device=requested)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if requested.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} asked for, but CUDA is not available here.")
        requested = torch.device("cuda", local_rank)
        torch.cuda.set_device(requested)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend_for(requested), init_method="env://")
        atexit.register(_destroy)
    return DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank, requested)


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()

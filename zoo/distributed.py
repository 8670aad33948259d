"""Data-parallel helpers over ``torch.distributed`` (launched by ``torchrun``; gloo on CPU, nccl on GPU).

The trainer keeps one full model per process and averages nothing implicitly: every process
computes the *sum* of its shard's losses divided by the number of targets in the whole global
batch, and :func:`all_reduce_gradients` sums the gradients. The result is exactly the gradient
of the single-process mean loss over the global batch, whatever the shards' sizes.

Without ``torchrun`` (``WORLD_SIZE`` unset or 1) every helper is a cheap no-op, so the same
training code runs in one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job: ``rank`` of ``world_size``, ``local_rank`` on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    owns_group: bool = False  # True when :func:`setup` created the process group (and :func:`cleanup` ends it)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on the process that writes checkpoints, logs and the trained folder."""
        return self.rank == 0


def setup(device: str | torch.device = "cpu") -> tuple[DistContext, torch.device]:
    """Join the ``torchrun`` job described by the environment, if any; returns the context and this process's device.

    The backend is nccl for CUDA devices and gloo otherwise; a CUDA device becomes
    ``cuda:LOCAL_RANK``. An already initialised process group is reused.
    """
    device = torch.device(device)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1 and not (dist.is_available() and dist.is_initialized()):
        return DistContext(), device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    owns_group = not dist.is_initialized()
    if owns_group:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, dist.get_backend(), owns_group), device


def cleanup(context: DistContext) -> None:
    """Leave the process group :func:`setup` created (after a barrier, so no process exits while others still talk)."""
    if context.enabled and dist.is_initialized():
        dist.barrier()
        if context.owns_group:
            dist.destroy_process_group()


def shard(indices: np.ndarray, context: DistContext) -> np.ndarray:
    """This process's contiguous part of a global batch (parts differ in size by at most one)."""
    if not context.enabled:
        return indices
    return np.array_split(indices, context.world_size)[context.rank]


def all_reduce_sum(value: float | int, context: DistContext, device: torch.device) -> float:
    """The sum of ``value`` over all processes."""
    if not context.enabled:
        return value
    tensor = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor.item())


def all_reduce_gradients(parameters: Iterable[nn.Parameter], context: DistContext) -> None:
    """Sum every parameter's gradient over all processes, in one flat buffer (missing gradients count as zero)."""
    if not context.enabled:
        return
    params = [p for p in parameters if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    offset = 0
    for p in params:
        n = p.grad.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
        offset += n


def broadcast_parameters(model: nn.Module, context: DistContext) -> None:
    """Copy rank 0's parameters and buffers to every process (one identical starting point)."""
    if not context.enabled:
        return
    for tensor in list(model.parameters()) + list(model.buffers()):
        dist.broadcast(tensor.data, src=0)


def broadcast_object(value: Any, context: DistContext) -> Any:
    """Rank 0's ``value`` on every process (any picklable object of the trainer's own making)."""
    if not context.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(value: Any, context: DistContext) -> list[Any]:
    """Every process's ``value`` in rank order (on every process)."""
    if not context.enabled:
        return [value]
    out: list[Any] = [None] * context.world_size
    dist.all_gather_object(out, value)
    return out

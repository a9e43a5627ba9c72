"""Distributed helpers for runs started by torchrun (RANK / WORLD_SIZE / LOCAL_RANK in the environment).

Without those variables everything degrades to a single process. NCCL on GPU, gloo on CPU. Only rank 0 logs,
writes metrics and checkpoints; evaluation results are gathered to every rank and scored on rank 0.
"""

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .checks import parse_device


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the process group when launched by torchrun; pick the device ("cuda:<local_rank>" when CUDA exists,
    else CPU, unless `device` is given)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    device = parse_device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if world_size > 1:
        host_group()  # created now, by every rank in the same order, as new_group requires
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


_HOST_GROUP = None


def host_group():
    """A gloo process group over all ranks, for small host-side agreements between ranks (a CPU tensor reduced
    over it never touches a CUDA stream, so it does not wait for the GPU). WORLD itself when that is gloo."""
    global _HOST_GROUP
    if _HOST_GROUP is None:
        _HOST_GROUP = dist.group.WORLD if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
    return _HOST_GROUP


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_gather_objects(obj) -> list:
    """Every rank's `obj` (any picklable value), in rank order."""
    if not is_distributed():
        return [obj]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def wrap_model(model: torch.nn.Module, info: DistInfo) -> torch.nn.Module:
    """DDP when world_size > 1. Normalisation layers are left as the model built them (SyncBN is its choice).
    Every trainable parameter takes part in every step's loss (the GT boxes are always positive RoIs, and a mask
    loss without positives is still a function of the mask logits), so DDP runs without find_unused_parameters
    and its extra traversal of the autograd graph."""
    if info.world_size == 1:
        return model
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=False)


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

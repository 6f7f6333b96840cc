"""The few process-group helpers training needs; a single process is world size 1 with no group.

``torchrun`` sets RANK / WORLD_SIZE / MASTER_ADDR; we then join a group (gloo on CPU, nccl on CUDA).
Every rank builds the same global batch from the same seed and takes its own share of it, so the
loss curve does not depend on the number of processes.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init(device: str = "cpu") -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return rank(), world


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def all_sum(values: list[float]) -> list[float]:
    if not dist.is_initialized():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def gather_objects(obj) -> list:
    if not dist.is_initialized():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()

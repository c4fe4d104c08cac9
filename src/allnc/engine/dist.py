"""Distribution helpers: one place for ranks and for all-reducing sums and counts.

Every function is a no-op (or the identity) in a single process, so library code calls
them unconditionally.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    return rank() == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def init_from_env(device_type: str) -> None:
    """Initialise the process group when started by torchrun (gloo on CPU, nccl on GPU)."""
    if is_dist() or not launched_by_torchrun():
        return
    backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)


def shutdown() -> None:
    if is_dist():
        dist.destroy_process_group()


def barrier() -> None:
    if is_dist():
        dist.barrier()


@torch.no_grad()
def all_reduce_sum(*tensors: torch.Tensor) -> None:
    """Sum each tensor over all ranks, in place (no autograd). Identity in one process."""
    if not is_dist():
        return
    for t in tensors:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)


def global_sum_with_local_grad(local: torch.Tensor) -> torch.Tensor:
    """The sum of ``local`` over ranks, with gradient flowing to this rank's ``local`` only.

    The gradient is scaled by the world size, so that after DistributedDataParallel
    averages gradients over ranks, a loss computed from the global sum gets exactly the
    gradient it would get in a single process that saw the whole global batch.
    """
    if not is_dist():
        return local
    total = local.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    w = world_size()
    return total + (local - local.detach()) * w


def broadcast_object(obj):
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]

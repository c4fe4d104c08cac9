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
    """Rank 0; before the process group exists, what torchrun's RANK says (so a run can take
    its directory's lock before it initialises the group)."""
    if not is_dist() and launched_by_torchrun():
        return int(os.environ.get("RANK", "0")) == 0
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


@torch.no_grad()
def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """The rows of ``t`` from every rank, concatenated in rank order (no autograd; every rank
    must pass the same shape). ``t`` itself in one process."""
    if not is_dist():
        return t
    parts = [torch.empty_like(t) for _ in range(world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts, 0)


@torch.no_grad()
def shuffled_forward(fn, x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """MoCo's shuffling BN: ``fn`` on this rank's rows ``x``, each computed in a batch of other
    ranks' images. The global batch (every rank's rows in rank order, the same size on every
    rank) is permuted by ``perm`` (a permutation of its rows, the same on every rank); each
    rank runs ``fn`` on its share of the permuted batch, the outputs are gathered and put back
    in the global order, and this rank keeps those of its own rows. So a network whose batch
    norm reads its input batch's statistics cannot use the statistics of the batch it is
    compared with. ``fn(x)`` in one process."""
    if not is_dist():
        return fn(x)
    b, r = x.shape[0], rank()
    everything = all_gather_cat(x)
    out = all_gather_cat(fn(everything[perm[r * b:(r + 1) * b]]))
    return out[torch.argsort(perm)][r * b:(r + 1) * b]


def broadcast_object(obj):
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class DistBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training statistics are those of the global batch, on any backend.

    torch's SyncBatchNorm needs a GPU; this one all-reduces per-channel sums, sums of
    squares and counts with an autograd-aware all-reduce, so it also runs under gloo on
    CPUs. Gradients flow through the global statistics: after DistributedDataParallel
    averages the gradients, N processes train exactly like one process with the global batch.
    """

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_dist()):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce as ar_grad

        c = x.shape[1]
        dims = [0] + list(range(2, x.dim()))
        xf = x.float()
        n_local = torch.tensor([x.numel() / c], dtype=torch.float32, device=x.device)
        packed = ar_grad(torch.cat([xf.sum(dims), (xf * xf).sum(dims), n_local]))
        n = packed[-1]
        mean = packed[:c] / n
        var = (packed[c:2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach() * m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1)).detach() * m)
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_sync_batchnorm(module: torch.nn.Module, device_type: str) -> torch.nn.Module:
    """Global-batch statistics for every batch norm: torch's SyncBatchNorm on GPUs,
    DistBatchNorm elsewhere."""
    if device_type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and not isinstance(module, DistBatchNorm):
        new = DistBatchNorm(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new
    for name, child in module.named_children():
        new_child = convert_sync_batchnorm(child, device_type)
        if new_child is not child:
            setattr(module, name, new_child)
    return module

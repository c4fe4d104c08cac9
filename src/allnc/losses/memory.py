"""Class-mean memory of AllNC: per-class exponential moving averages of batch class means.

One statistics pass per step serves both the losses and the update:

* ``batch_stats(features, y)``: per-class sums and counts of the *global* batch (summed over
  data-parallel ranks), the sums with gradient;
* ``mix(sums, counts)``: the batch class mean ``m_k = s_k / n_k`` (with gradient) where class k
  is present, the memory ``mu_k`` (detached) elsewhere, and the ``present`` mask;
* ``update_from_stats(sums, counts)`` (no gradient, after the losses): for present classes
  ``mu_k <- beta mu_k + (1 - beta) m_k``; a class seen for the first time is set to ``m_k``;
  absent classes keep their memory. Every rank holds the same memory.
* ``centred_normalized(means) = normalize(mu_k - mean_j mu_j)``: the class-balanced centre.

Gradient under data parallel training: the sums go through ``global_sum_with_local_grad``,
which scales this rank's gradient by the world size; after DistributedDataParallel averages
the gradients over ranks, a loss computed from the mixed means gets exactly the gradient of a
single process that saw the whole global batch. (Every rank must compute the same loss from
the means, which holds since every rank holds the same means.)
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..dist import all_reduce_sum, global_sum_with_local_grad
from .ce import no_autocast


def centred_mean(means: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The class-balanced centre ``mean_k mu_k`` (d,), over the ``valid`` classes when a
    K-bool mask is given (none valid: the zero vector)."""
    if valid is None:
        return means.mean(dim=0)
    v = valid.to(device=means.device, dtype=means.dtype)
    return (v[:, None] * means).sum(dim=0) / v.sum().clamp_min(1.0)


def centred_normalized(means: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``normalize(mu_k - c)`` with the class-balanced centre ``c = mean_k mu_k`` (the plain
    mean of the class means, so head classes do not dominate it; over the ``valid`` classes
    only when a K-bool mask is given)."""
    if valid is None:
        centre = means.mean(dim=0, keepdim=True)
    else:
        v = valid.to(device=means.device, dtype=means.dtype)
        centre = (v[:, None] * means).sum(dim=0, keepdim=True) / v.sum().clamp_min(1.0)
    return F.normalize(means - centre, dim=1)


class ClassMeanMemory(nn.Module):
    """Per-class EMA of batch class means (module docstring).

    Buffers (so checkpoints hold them): ``means`` (K x d, float32) and ``seen`` (K, bool).
    ``momentum`` is beta (method.memory.momentum, default 0.9).
    """

    means: torch.Tensor
    seen: torch.Tensor

    def __init__(self, num_classes: int, dim: int, momentum: float = 0.9):
        super().__init__()
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must lie in [0, 1], got {momentum}")
        self.num_classes = int(num_classes)
        self.dim = int(dim)
        self.momentum = float(momentum)
        self.register_buffer("means", torch.zeros(self.num_classes, self.dim, dtype=torch.float32))
        self.register_buffer("seen", torch.zeros(self.num_classes, dtype=torch.bool))

    # ---------------------------------------------------------------- statistics
    def batch_stats(self, features: torch.Tensor, y: torch.Tensor, grad: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-class sums (K x d, float32) and counts (K, float32) of the global batch.

        Counts are all-reduced; sums too, with ``grad=True`` through
        ``global_sum_with_local_grad`` (gradient to this rank's features), else detached.
        """
        if features.dim() != 2 or features.shape[1] != self.dim:
            raise ValueError(f"features must be B x {self.dim}, got {tuple(features.shape)}")
        with no_autocast(features):
            f = features.float()
            if not grad:
                f = f.detach()
            onehot = F.one_hot(y.long(), self.num_classes).to(f.dtype)  # B x K
            local_sums = onehot.T @ f
            counts = onehot.detach().sum(dim=0)
            all_reduce_sum(counts)
            if grad:
                sums = global_sum_with_local_grad(local_sums)
            else:
                sums = local_sums.clone()
                all_reduce_sum(sums)
        return sums, counts


    def mix(self, sums: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(means (K x d, float32), present (K bool))`` from ``batch_stats``: the global batch
        mean (with gradient) where class k is present, the detached memory elsewhere. Rows
        neither present nor ``seen`` are zeros (mask them with ``present | seen``)."""
        present = counts > 0
        bm = sums / counts.clamp_min(1.0)[:, None]
        mem = self.means.detach().to(bm.device)
        return torch.where(present[:, None], bm, mem), present


    # ---------------------------------------------------------------- update

    @torch.no_grad()
    def update_from_stats(self, sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """EMA update from already all-reduced per-class sums and counts."""
        sums = sums.detach().to(self.means.device, torch.float32)
        counts = counts.detach().to(self.means.device, torch.float32)
        present = counts > 0
        bm = sums / counts.clamp_min(1.0)[:, None]
        beta = self.momentum
        ema = beta * self.means + (1.0 - beta) * bm
        first = present & ~self.seen
        again = present & self.seen
        new = torch.where(again[:, None], ema, self.means)
        new = torch.where(first[:, None], bm, new)
        self.means.copy_(new)
        self.seen |= present
        return present

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, dim={self.dim}, momentum={self.momentum}"

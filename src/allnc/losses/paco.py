"""PaCo's loss and its queue of keys (parametric contrastive learning, Cui et al. ICCV 2021).

Each anchor is the unit projection q_i of an image's first view. Its candidates are

* the C classes, whose "similarity" is the class logit made balanced by logit adjustment,
  ``a_ic = z_ic + tau log pi_c`` (the parametric class centres);
* the other samples: the batch's other anchors, the batch's keys (the momentum encoder's unit
  projections of the second views) and the queue of earlier keys, with similarity
  ``a_ij = q_i . k_j / T``.

    loss_i = - sum_j p_ij log( exp(a_ij) / sum_l w_l exp(a_il) ) / sum_j p_ij

The positive weights are ``p_ic = beta [c = y_i]`` on the classes and ``p_ij = alpha [y_j = y_i]``
on the samples; the denominator weighs every class by 1 and every sample by ``gamma``. The
anchor itself and the queue's empty slots (label -1) are neither positive nor in the
denominator. With ``alpha = gamma = 0`` the loss is the logit-adjusted cross-entropy.

``KeyQueue`` is the first-in first-out memory of keys and their labels (buffers, so a checkpoint
holds it). Under data-parallel training every rank enqueues the keys of every rank.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..dist import all_gather_cat
from .ce import fp32_up, no_autocast


def paco_loss(q: torch.Tensor, y: torch.Tensor, logits: torch.Tensor, keys: torch.Tensor, key_labels: torch.Tensor,
              log_prior: torch.Tensor, *, alpha: float, beta: float = 1.0, gamma: float = 1.0,
              temperature: float = 0.05, la_tau: float = 1.0) -> torch.Tensor:
    """PaCo's loss (module docstring), averaged over the B anchors.

    ``q`` (B x d, unit rows) are the anchors and the first B sample candidates, ``logits``
    (B x C) the classifier's outputs on the anchors, ``keys`` (N x d, unit rows) and
    ``key_labels`` (N, -1 for an empty slot) the other sample candidates, ``log_prior`` (C)
    the log class prior of the logit adjustment.
    """
    if beta <= 0:
        raise ValueError(f"beta must be positive (the class centre is every anchor's positive), got {beta}")
    with no_autocast(q):
        b, c = logits.shape
        q32 = fp32_up(q)
        cand = torch.cat([q32, fp32_up(keys).detach()], 0)
        labels = torch.cat([y, key_labels.to(y.dtype)], 0)
        sim = q32 @ cand.T / temperature  # B x (B + N)
        adj = fp32_up(logits) + la_tau * log_prior.to(logits.device, q32.dtype)
        scores = torch.cat([adj, sim], 1)
        not_self = torch.ones(b, cand.shape[0], dtype=torch.bool, device=q.device)
        not_self[:, :b] = ~torch.eye(b, dtype=torch.bool, device=q.device)
        valid = not_self & (labels >= 0)[None, :]
        log_gamma = math.log(gamma) if gamma > 0 else -math.inf
        log_w = torch.cat([torch.zeros_like(adj), torch.full_like(sim, log_gamma).masked_fill(~valid, -math.inf)], 1)
        log_prob = scores - torch.logsumexp(scores + log_w, 1, keepdim=True)
        same = (labels[None, :] == y[:, None]) & valid
        pos = torch.cat([beta * F.one_hot(y, c).to(sim.dtype), alpha * same.to(sim.dtype)], 1)
        return (-(pos * log_prob).sum(1) / pos.sum(1)).mean()


class KeyQueue(nn.Module):
    """A first-in first-out queue of ``size`` keys of width ``dim`` and their labels.

    Buffers: ``keys`` (size x dim), ``labels`` (size, long; -1 marks a slot not yet filled) and
    ``ptr`` (the next slot). The queue starts empty (the released code starts it with random
    unit vectors under random labels); a batch wraps around the end when ``size`` is not a
    multiple of it.
    """

    keys: torch.Tensor
    labels: torch.Tensor
    ptr: torch.Tensor

    def __init__(self, size: int, dim: int):
        super().__init__()
        if size < 1:
            raise ValueError(f"the queue needs at least one slot, got size {size}")
        self.size, self.dim = int(size), int(dim)
        self.register_buffer("keys", torch.zeros(self.size, self.dim))
        self.register_buffer("labels", torch.full((self.size,), -1, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor, labels: torch.Tensor) -> None:
        """Write the keys of every rank after the newest ones, over the oldest. Tensor
        operations only (no Python integer from the pointer), so a compiled step keeps it."""
        keys, labels = all_gather_cat(keys.detach()), all_gather_cat(labels.detach())
        n = keys.shape[0]
        if n > self.size:  # only the newest ``size`` keys survive
            keys, labels, n = keys[-self.size:], labels[-self.size:], self.size
        idx = (self.ptr + torch.arange(n, device=self.ptr.device)) % self.size
        self.keys.index_copy_(0, idx, keys.to(self.keys.dtype))
        self.labels.index_copy_(0, idx, labels.to(self.labels.dtype))
        self.ptr.copy_((self.ptr + n) % self.size)

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}"

"""Balanced supervised contrastive loss (BCL, Zhu et al., CVPR 2022) and the class-averaged
contrast that BCL and HyCon share.

Generic form, for an anchor ``z_i`` with candidate set ``C(i)`` (each candidate ``a`` has a
class), positives ``P(i)`` (the candidates of the anchor's class) and ``A_k(i)`` the
candidates of class k:

    l_i = -(1/|P(i)|) sum_{p in P(i)} log( exp(z_i.p/tau) / D_i )

    class-averaged:  D_i = sum_k (1/|A_k(i)|) sum_{a in A_k(i)} exp(z_i.a/tau)   (empty k skipped)
    plain (SupCon):  D_i = sum_{a in C(i)} exp(z_i.a/tau)

Class averaging gives every class present among the candidates the weight of one average
member, so a head class that fills the batch weighs as much as any other class.
Anchors without a positive are left out of the mean.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .ce import fp32_up, no_autocast


def class_averaged_contrast(
    logits: torch.Tensor,
    anchor_labels: torch.Tensor,
    cand_labels: torch.Tensor,
    allowed: torch.Tensor,
    num_classes: int,
    class_average: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-anchor contrastive loss from similarities already divided by tau.

    ``logits`` (A x N) = z_i.a/tau, ``allowed`` (A x N bool) the candidate set of each anchor,
    ``anchor_labels`` (A), ``cand_labels`` (N). Returns ``(loss (A), has_pos (A bool),
    log_share (A x N))`` where ``log_share[i, a]`` is the log of candidate a's share of the
    denominator ``D_i`` (-inf outside the candidate set); ``loss`` is 0 where ``has_pos`` is
    False.
    """
    A, N = logits.shape
    pos = allowed & (anchor_labels[:, None] == cand_labels[None, :])
    logw = logits
    if class_average:
        onehot = F.one_hot(cand_labels, num_classes).to(logits.dtype)  # N x K
        count = allowed.to(logits.dtype) @ onehot  # A x K: |A_k(i)|
        per_cand = count.gather(1, cand_labels[None, :].expand(A, N))  # A x N: |A_{class(a)}(i)|
        logw = logits - per_cand.clamp_min(1.0).log()
    any_allowed = allowed.any(dim=1, keepdim=True)
    # rows without any candidate get dummy zeros (finite, masked out below) to keep grads NaN-free
    logw = torch.where(allowed, logw, torch.full_like(logw, float("-inf")))
    logw = torch.where(any_allowed, logw, torch.zeros_like(logw))
    log_den = torch.logsumexp(logw, dim=1)
    n_pos = pos.sum(dim=1)
    has_pos = n_pos > 0
    pos_mean = torch.where(pos, logits, torch.zeros_like(logits)).sum(dim=1) / n_pos.clamp_min(1).to(logits.dtype)
    loss = torch.where(has_pos, log_den - pos_mean, torch.zeros_like(log_den))
    log_share = torch.where(allowed, logw - log_den[:, None], torch.full_like(logw, float("-inf")))
    return loss, has_pos, log_share


def reduce_anchors(loss: torch.Tensor, has_pos: torch.Tensor) -> torch.Tensor:
    """Mean over anchors that have a positive (0, still attached to the graph, if none)."""
    n = has_pos.sum()
    return loss.sum() / n.clamp_min(1).to(loss.dtype)


def class_shares(log_share: torch.Tensor, cand_labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(A x K) share of each class in each anchor's denominator (rows sum to 1)."""
    onehot = F.one_hot(cand_labels, num_classes).to(log_share.dtype)
    return log_share.exp() @ onehot


class BalancedSupConLoss(nn.Module):
    """BCL's balanced supervised contrastive loss with class complement (prototypes).

    ``forward(features, y, prototypes)``: ``features`` (2B x p) are the two views stacked
    ``[view 1; view 2]``, ``y`` their labels (2B, or B and then repeated for both views),
    ``prototypes`` (K x p) one per class (in BCL the classifier weights passed through the
    projection head; gradient flows into them). Features and prototypes are L2-normalised
    here (idempotent when they already are).

    The contrast set is the 2B views plus the K prototypes; the anchors are the 2B views only.
    Positives of anchor i: the other views of its class and its class prototype. The
    denominator is class-averaged over ``A_k(i)``, the members of class k in the contrast set
    other than the anchor itself (the prototypes make every class present):

        l_i = -(1/|P(i)|) sum_{p in P(i)} log( exp(z_i.p/tau)
                                             / sum_k (1/|A_k(i)|) sum_{a in A_k(i)} exp(z_i.a/tau) )

    ``class_average=False`` gives plain SupCon with the same contrast set (for comparison).
    """

    def __init__(self, num_classes: int, tau: float = 0.1, class_average: bool = True):
        super().__init__()
        self.num_classes = int(num_classes)
        self.tau = float(tau)
        self.class_average = bool(class_average)

    def _terms(self, features, y, prototypes):
        n = features.shape[0]
        if y.shape[0] * 2 == n:
            y = torch.cat([y, y])
        if y.shape[0] != n:
            raise ValueError(f"labels ({y.shape[0]}) do not match the 2B features ({n})")
        K = self.num_classes
        if prototypes.shape[0] != K:
            raise ValueError(f"expected {K} prototypes, got {prototypes.shape[0]}")
        with no_autocast(features):
            z = F.normalize(fp32_up(features), dim=1)
            c = F.normalize(prototypes.to(z.dtype), dim=1)
            cand = torch.cat([z, c], dim=0)
            cand_labels = torch.cat([y, torch.arange(K, device=y.device)])
            logits = z @ cand.T / self.tau
            allowed = torch.ones_like(logits, dtype=torch.bool)
            idx = torch.arange(n, device=z.device)
            allowed[idx, idx] = False
            loss, has_pos, log_share = class_averaged_contrast(
                logits, y, cand_labels, allowed, K, self.class_average
            )
        return loss, has_pos, log_share, cand_labels

    def forward(
        self, features: torch.Tensor, y: torch.Tensor, prototypes: torch.Tensor, reduction: str = "mean"
    ) -> torch.Tensor:
        loss, has_pos, _, _ = self._terms(features, y, prototypes)
        if reduction == "none":
            return loss
        return reduce_anchors(loss, has_pos)

    @torch.no_grad()
    def denominator_class_shares(
        self, features: torch.Tensor, y: torch.Tensor, prototypes: torch.Tensor
    ) -> torch.Tensor:
        """(2B x K): each class's share of each anchor's denominator (a diagnostic)."""
        _, _, log_share, cand_labels = self._terms(features, y, prototypes)
        return class_shares(log_share, cand_labels, self.num_classes)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, tau={self.tau}, class_average={self.class_average}"


__all__ = [
    "BalancedSupConLoss",
    "class_averaged_contrast",
    "class_shares",
    "reduce_anchors",
]

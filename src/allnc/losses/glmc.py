"""GLMC's two losses (Du et al. CVPR 2023): cross-entropy against soft targets and the
negative-cosine consistency of SimSiam (Chen and He, CVPR 2021).

GLMC mixes every training image with another, so its targets are soft: mixed one-hot
vectors, and for its re-balanced term those vectors scaled per class. ``soft_target_ce``
is ``mean_i -sum_k t_ik log softmax(z_i)_k`` with ``t`` used as given (not renormalised: a
scaled target is what makes the re-balanced term weigh a class more).

``simsiam_loss(p, z) = -mean_i cos(p_i, sg(z_i))``: the prediction of one view is pulled
towards the projection of the other, which gets no gradient.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .ce import fp32_up


def soft_target_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``logits`` (B x K) against the targets ``target`` (B x K), taken as
    they are; a one-hot target gives ``F.cross_entropy``."""
    if logits.shape != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(target.shape)} differ in shape")
    z = fp32_up(logits)
    return -(F.log_softmax(z, dim=1) * target.to(z.dtype)).sum(dim=1).mean()


def simsiam_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Negative mean cosine between ``p`` and the detached ``z`` (both B x d), in [-1, 1]."""
    return -F.cosine_similarity(fp32_up(p), fp32_up(z).detach(), dim=1).mean()

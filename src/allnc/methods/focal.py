"""Focal loss (Lin et al. ICCV 2017): cross-entropy scaled by (1 - p_t)^gamma, which lowers the
weight of well-classified (mostly head-class) samples; gamma = 0 is cross-entropy.

The whole method is this file and ``configs/methods/focal.yaml``: the package registers it
when imported, the config tree gains ``method.focal``, every dataset gains ``*_focal``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..losses.ce import fp32_up, no_autocast
from .base import METHODS
from .single import SingleBranch


@dataclass
class FocalConfig:
    # the focusing parameter; 0 = cross-entropy
    gamma: float = 2.0


def focal_loss(logits: torch.Tensor, y: torch.Tensor, gamma: float) -> torch.Tensor:
    """Mean over the batch of -(1 - p_t)^gamma log p_t, p_t the softmax probability of the label."""
    with no_autocast(logits):
        logp = F.log_softmax(fp32_up(logits), dim=1).gather(1, y[:, None]).squeeze(1)
        if gamma == 0:
            return -logp.mean()
        return -((1 - logp.exp()).clamp_min(0) ** gamma * logp).mean()


@METHODS.register("focal", section="focal", config=FocalConfig)
class Focal(SingleBranch):
    """Focal loss on a linear classifier."""

    classifier_kind = ""

    def loss_fn(self, logits, y, feats):
        return focal_loss(logits, y, float(self.cfg.method.focal.gamma))

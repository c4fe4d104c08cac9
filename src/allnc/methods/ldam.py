"""LDAM with deferred re-weighting (Cao et al. NeurIPS 2019)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..losses import LDAMLoss, drw_weights
from .base import METHODS
from .single import SingleBranch


@dataclass
class LDAMConfig:
    # the largest class margin (the rarest class); others scale as n^-1/4
    max_margin: float = 0.5
    # logit scale s of the cosine classifier
    scale: float = 30.0
    # deferred re-weighting starts at this fraction of the epochs; null = at the first
    # learning-rate decay (LDAM-DRW's recipe: epoch 160 of 200)
    drw_start: Optional[float] = None
    # beta of the effective-number class weights of DRW
    drw_beta: float = 0.9999


@METHODS.register("ldam_drw", section="ldam", config=LDAMConfig)
class LDAMDRW(SingleBranch):
    """LDAM margin loss on a cosine classifier with deferred re-weighting (Cao et al. 2019)."""

    classifier_kind = "normed"

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        c = cfg.method.ldam
        self.ldam = LDAMLoss(self.class_counts, max_margin=float(c.max_margin), scale=float(c.scale))
        self.register_buffer("drw", drw_weights(self.class_counts, beta=float(c.drw_beta)))
        # whether deferred re-weighting is on; a buffer, so a checkpoint records it
        self.register_buffer("drw_on", torch.zeros((), dtype=torch.bool))

    def drw_start_epoch(self, epochs: int) -> int:
        """The first epoch (0-based) with re-weighting: ``method.ldam.drw_start`` x epochs when
        given, else the first learning-rate decay (LDAM-DRW's recipe: epoch 160 of 200, its
        first milestone), else, without a step schedule, 80% of the epochs."""
        start = self.cfg.method.ldam.drw_start
        if start is not None:
            return int(round(float(start) * epochs))
        t = self.cfg.train
        if t.schedule == "step" and len(t.milestones):
            return int(min(t.milestones))
        return int(round(0.8 * epochs))

    def loss_logit_scale(self) -> float:
        return float(self.cfg.method.ldam.scale)  # LDAMLoss scales the cosines by s

    def on_epoch_start(self, epoch, epochs):
        self.drw_on.fill_(epoch >= self.drw_start_epoch(epochs))

    def loss_fn(self, logits, y, feats):
        # all-ones weights before the switch (equal to unweighted CE), without a host sync
        weight = torch.where(self.drw_on, self.drw, torch.ones_like(self.drw))
        return self.ldam(logits, y, weight=weight)

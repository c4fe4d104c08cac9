"""Cross-entropy and its re-balanced forms: plain (optionally re-sampled), logit adjusted
(Menon et al. ICLR 2021) and balanced softmax (Ren et al. NeurIPS 2020; equal to logit
adjustment with tau = 1)."""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from ..losses import balanced_softmax_ce, log_prior, logit_adjusted_ce
from .base import METHODS
from .single import SingleBranch


@dataclass
class LAConfig:
    # the prior's exponent: logits + tau * log(n_k / n)
    tau: float = 1.0


@METHODS.register("ce")
class CrossEntropy(SingleBranch):
    """Plain cross-entropy; with method.sampler != instance it is re-sampling."""

    classifier_kind = ""

    def loss_fn(self, logits, y, feats):
        return F.cross_entropy(logits, y)


@METHODS.register("la", section="la", config=LAConfig)
class LogitAdjusted(SingleBranch):
    """Logit-adjusted cross-entropy (Menon et al. ICLR 2021)."""

    classifier_kind = ""

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        self.register_buffer("log_prior", log_prior(self.class_counts))

    def loss_fn(self, logits, y, feats):
        return logit_adjusted_ce(logits, y, self.log_prior, tau=float(self.cfg.method.la.tau))


@METHODS.register("bsce")
class BalancedSoftmax(LogitAdjusted):
    """Balanced softmax cross-entropy (Ren et al. NeurIPS 2020)."""

    def loss_fn(self, logits, y, feats):
        return balanced_softmax_ce(logits, y, self.log_prior)

"""A fixed simplex-ETF classifier with dot regression or cross-entropy (Yang et al. NeurIPS 2022)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch.nn.functional as F
from torch import nn

from ..losses import batch_class_weights, dot_regression_loss
from .base import METHODS
from .single import SingleBranch


@dataclass
class ETFConfig:
    choices: ClassVar[dict] = {"loss": ("dr", "ce")}
    # dr (dot regression, Yang et al. 2022) | ce
    loss: str = "dr"
    # normalize features before the fixed ETF classifier (as the paper)
    normalize_features: bool = True
    # batch norm on the features before the ETF (as the authors' code): post-ReLU features are
    # non-negative and cannot reach ETF directions with negative entries without it
    feature_bn: bool = True
    # dot regression: weigh each image by B / (C_b n_c) (n_c images of its class among the
    # C_b classes of the batch), so that every class present counts equally, as the authors'
    # code does by default (its GivenEw); false: every image 1
    batch_class_weight: bool = True


@METHODS.register("etf", section="etf", config=ETFConfig)
class FixedETF(SingleBranch):
    """Fixed simplex-ETF classifier (Yang et al. NeurIPS 2022) with dot regression or CE."""

    classifier_kind = "etf"

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        self.feature_bn = nn.BatchNorm1d(self.backbone.out_dim) if cfg.method.etf.feature_bn else nn.Identity()

    def head_input(self, h):
        h = self.feature_bn(h)
        return F.normalize(h, dim=1) if self.cfg.method.etf.normalize_features else h

    def loss_fn(self, logits, y, feats):
        if self.cfg.method.etf.loss == "dr":
            # feats come from head_input: unit-normalised exactly when method.etf.normalize_features
            w = batch_class_weights(y, self.num_classes) if self.cfg.method.etf.batch_class_weight else None
            return dot_regression_loss(feats, y, self.classifier.weight, normalize=False, weight=w)
        return F.cross_entropy(logits, y)

"""Balanced contrastive learning, BCL (Zhu et al. CVPR 2022)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

import torch
import torch.nn.functional as F

from ..data.augment import PRESETS
from ..losses import BalancedSupConLoss, log_prior, logit_adjusted_ce
from ..models import NormedLinear, ProjectionMLP
from .base import METHODS, LoaderSpec
from .single import SingleBranch


@dataclass
class BCLConfig:
    choices: ClassVar[dict] = {"classifier": ("normed", "linear"), "view_augment": PRESETS,
                               "ce_augment": (None, *PRESETS)}
    # temperature of the balanced supervised contrastive loss
    tau: float = 0.1
    # weight of the logit-adjusted cross-entropy
    lambda_ce: float = 2.0
    # weight of the balanced contrastive loss
    lambda_scl: float = 0.6
    # output width of the projection heads
    proj_dim: int = 128
    # hidden width of the projection heads; 0 = the feature width (as the released code)
    proj_hidden: int = 0
    # logit adjustment's tau in the cross-entropy term
    la_tau: float = 1.0
    # normed: the released code's cosine classifier with its scale built in; linear: a plain one
    classifier: str = "normed"
    # logit scale of the cosine classifier
    scale: float = 30.0
    # preset of the two contrastive views: sim (SimAugment, as the released code) | standard | strong | none
    view_augment: str = "sim"
    # preset of view 0 (the cross-entropy view); null = data.augment (the released code uses
    # its strong augmentation there: the *_bcl_strong configs)
    ce_augment: Optional[str] = None


@METHODS.register("bcl", section="bcl", config=BCLConfig)
class BCL(SingleBranch):
    """Balanced contrastive learning (Zhu et al. CVPR 2022).

    Three augmented views per image: view 0 feeds the logit-adjusted cross-entropy, views
    1 and 2 the balanced supervised contrastive loss, whose class prototypes are the
    classifier rows passed through the projection head (class complement).
    """

    classifier_kind = ""

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        c = cfg.method.bcl
        va = str(c.view_augment)
        ca = str(c.ce_augment or cfg.data.augment)
        self.loaders = (LoaderSpec(cfg.method.sampler, 3, (ca, va, va)),)
        d = self.backbone.out_dim
        if c.classifier == "normed":
            self.classifier = NormedLinear(d, info.num_classes, scale=float(c.scale))
        hidden = int(c.proj_hidden) or d
        self.proj = ProjectionMLP(d, hidden, int(c.proj_dim))
        self.proto_head = ProjectionMLP(d, hidden, int(c.proj_dim))
        self.scl = BalancedSupConLoss(info.num_classes, tau=float(c.tau))
        self.register_buffer("log_prior", log_prior(self.class_counts))

    def training_loss(self, batches, state):
        c = self.cfg.method.bcl
        views, y = batches[0]["x"], batches[0]["y"]
        b = y.shape[0]
        h = self.backbone(torch.cat(list(views), 0))
        logits = self.classifier(h[:b])
        ce = logit_adjusted_ce(logits, y, self.log_prior, tau=float(c.la_tau))
        z = F.normalize(self.proj(h[b:]), dim=1)
        protos = F.normalize(self.proto_head(self.classifier.weight), dim=1)
        scl = self.scl(z, torch.cat([y, y]), protos)
        loss = float(c.lambda_ce) * ce + float(c.lambda_scl) * scl
        return loss, {"loss_cls": ce.detach(), "loss_scl": scl.detach()}


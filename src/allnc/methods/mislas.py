"""MiSLAS's second stage (Zhong et al. CVPR 2021, "Improving Calibration for Long-Tailed
Recognition"): on the frozen backbone of a mixup-trained run (``_ce_mixup``, its first stage),
the classifier goes on learning, from where that run left it, with label-aware smoothing,
class-balanced sampling and a learnable per-class logit scale; "shift learning" lets the
BN layers' running statistics follow the new sampler."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..data.samplers import MODES
from ..losses import LabelAwareSmoothing
from ..losses.las import SHAPES
from .base import METHODS
from .crt import FrozenBackbone


@dataclass
class MiSLASConfig:
    choices: ClassVar[dict] = {"sampler": MODES, "shape": SHAPES}
    # label-aware smoothing factor of the most frequent class
    smooth_head: float = 0.3
    # label-aware smoothing factor of the rarest class
    smooth_tail: float = 0.0
    # how the factor falls from head to tail with the class count (the paper: concave)
    shape: str = "concave"
    # BN layers in training mode during the stage: their running statistics follow the
    # class-balanced batches (no BN parameter learns); false: as the first stage left them
    shift_bn: bool = False
    # the classifier's learning rate is this fraction of train.lr (the logit scale's is train.lr)
    lr_factor: float = 0.5
    # a learnable per-class factor on the logits (initialised to 1), trained with the classifier
    logit_scale: bool = True
    # the sampler of the stage: class_aware (the released code's: classes in a cycle, 4 images
    # of a class in a row), balanced (i.i.d. class-balanced draws) or another mode
    sampler: str = "class_aware"
    # start the classifier afresh (MiSLAS goes on from the first stage's classifier)
    reset_classifier: bool = False


@METHODS.register("mislas", section="mislas", config=MiSLASConfig)
class MiSLAS(FrozenBackbone):
    """MiSLAS stage 2: label-aware smoothing on the frozen backbone of ``init_from``."""

    section = "mislas"

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        c = cfg.method.mislas
        self.las = LabelAwareSmoothing(self.class_counts, float(c.smooth_head), float(c.smooth_tail), str(c.shape))
        # ones and not learning when the option is off, so that the checkpoint's keys do not depend on it
        self.logit_scale = nn.Parameter(torch.ones(info.num_classes), requires_grad=bool(c.logit_scale))

    def features(self, x):
        h, logits = super().features(x)
        return h, logits * self.logit_scale

    def classifier_weight(self):
        """The classifier that makes the predictions: each class's row and bias times its
        logit scale."""
        s = self.logit_scale.detach()
        b = getattr(self.classifier, "bias", None)
        return self.classifier.weight * s[:, None], (None if b is None else b * s)

    def parameter_groups(self, weight_decay):
        head = [p for p in self.classifier.parameters() if p.requires_grad]
        groups = [{"params": head, "weight_decay": weight_decay, "lr_mult": float(self.cfg.method.mislas.lr_factor)}]
        if self.logit_scale.requires_grad:
            groups.append({"params": [self.logit_scale], "weight_decay": weight_decay})
        return groups

    def loss_fn(self, logits, y, feats):
        return self.las(logits, y)

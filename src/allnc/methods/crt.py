"""Classifier re-training on a frozen backbone: cRT (Kang et al. ICLR 2020), and the base
of MiSLAS's second stage (``mislas.py``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch.nn.functional as F

from ..errors import ConfigError
from ..data.samplers import MODES
from .base import METHODS, LoaderSpec
from .single import SingleBranch


@dataclass
class CRTConfig:
    choices: ClassVar[dict] = {"sampler": MODES}
    # the sampler of the re-training: class_aware (the released code's: classes in a cycle, 4
    # images of a class in a row), balanced (i.i.d. class-balanced draws) or another mode
    sampler: str = "class_aware"
    # start the classifier afresh (false: from the source run's)
    reset_classifier: bool = True
    # BN layers in training mode during the re-training, as the released code runs its frozen
    # feature model: their running statistics follow the class-balanced batches (no BN
    # parameter learns); false: as the source run left them
    shift_bn: bool = True


class FrozenBackbone(SingleBranch):
    """A classifier trained on the frozen backbone of the run named by ``init_from``. The
    section ``method.<section>`` gives ``sampler``, ``reset_classifier`` and ``shift_bn``; no
    backbone parameter learns, and its BN statistics stay as trained unless ``shift_bn``
    (BN layers in training mode: their running statistics follow the new sampler)."""

    classifier_kind = ""
    section = "crt"

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        c = cfg.method[self.section]
        self.shift_bn = bool(c.shift_bn)
        self.loaders = (LoaderSpec(c.sampler, 1),)
        if not cfg.init_from:
            raise ConfigError(f"method {cfg.method.name} needs init_from=RUN_DIR (the finished run whose backbone it freezes)")
        for p in self.backbone.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if not self.shift_bn:
            self.backbone.eval()  # frozen: BN statistics stay as trained
        return self

    def load_backbone_from(self, state_dict):
        super().load_backbone_from(state_dict)
        if not getattr(self.cfg.method, self.section).reset_classifier:
            w = {k[len("classifier."):]: v for k, v in state_dict.items() if k.startswith("classifier.")}
            self.classifier.load_state_dict(w)


@METHODS.register("crt", section="crt", config=CRTConfig)
class ClassifierRetraining(FrozenBackbone):
    """Classifier re-training, cRT (Kang et al. ICLR 2020): a frozen backbone from
    ``init_from`` and a classifier re-trained with class-balanced sampling."""

    def loss_fn(self, logits, y, feats):
        return F.cross_entropy(logits, y)

"""Classifier re-training, cRT (Kang et al. ICLR 2020)."""
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
    # the sampler of the re-training (class-balanced in the paper)
    sampler: str = "balanced"
    # start the classifier afresh (false: from the source run's)
    reset_classifier: bool = True


@METHODS.register("crt", section="crt", config=CRTConfig)
class ClassifierRetraining(SingleBranch):
    """Classifier re-training, cRT (Kang et al. ICLR 2020): a frozen backbone from
    ``init_from`` and a classifier re-trained with class-balanced sampling."""

    classifier_kind = ""

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        self.loaders = (LoaderSpec(cfg.method.crt.sampler, 1),)
        if not cfg.init_from:
            raise ConfigError("method crt needs init_from=RUN_DIR (the finished run whose backbone it freezes)")
        for p in self.backbone.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()  # frozen: BN statistics stay as trained
        return self

    def load_backbone_from(self, state_dict):
        super().load_backbone_from(state_dict)
        if not self.cfg.method.crt.reset_classifier:
            w = {k[len("classifier."):]: v for k, v in state_dict.items() if k.startswith("classifier.")}
            self.classifier.load_state_dict(w)

    def loss_fn(self, logits, y, feats):
        return F.cross_entropy(logits, y)

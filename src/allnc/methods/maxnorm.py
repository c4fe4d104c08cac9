"""Weight balancing's second stage, MaxNorm + weight decay (Alshammari et al. CVPR 2022): on
the frozen backbone of a finished run (``init_from``), the classifier goes on learning from
where that run left it, with strong weight decay, a class-balanced loss, and each class's row
kept inside a ball of a radius fixed from the first stage's row norms (projected gradient
descent). On a GLMC run it is "GLMC + MaxNorm", the variant GLMC's authors report."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..data.samplers import MODES
from ..errors import ConfigError
from ..losses import cb_softmax_bce, drw_weights, maxnorm_project_, maxnorm_threshold
from .base import METHODS, StepState
from .crt import FrozenBackbone

LOSSES = ("cb_bce", "cb_ce", "ce")
PROJECT = ("step", "epoch")


@dataclass
class MaxNormConfig:
    choices: ClassVar[dict] = {"sampler": MODES, "loss": LOSSES, "project": PROJECT}
    # the radius T = min + thresh (max - min) of the first stage's classifier row norms
    thresh: float = 0.1
    # step: project after every optimizer step (the paper's projected gradient descent, and
    # what its authors say they meant); epoch: after each epoch's last step, as the released
    # demo calls it
    project: str = "step"
    # cb_bce: the released code's class-balanced "softmax" loss (a binary cross-entropy of the
    # softmax against the one-hot label, each image weighted by its class's effective-number
    # weight); cb_ce: cross-entropy with those class weights (Cui et al.); ce: plain
    loss: str = "cb_bce"
    # beta of the effective-number class weights (1 - beta) / (1 - beta^n_k)
    cb_beta: float = 0.9999
    # the stage's sampler (the released code trains it on the instance-sampled loader)
    sampler: str = "instance"
    # start the classifier afresh (false: from the first stage's, whose row norms set T)
    reset_classifier: bool = False
    # BN layers in training mode (the released demo trains in train mode: their running
    # statistics keep following the batches, no BN parameter learns); false: as trained
    shift_bn: bool = True


@METHODS.register("maxnorm", section="maxnorm", config=MaxNormConfig)
class MaxNormStage(FrozenBackbone):
    """MaxNorm + weight decay on the frozen backbone of ``init_from``: the classifier's rows
    stay within the radius ``maxnorm_radius`` (a buffer, fixed when the first stage's
    classifier is loaded, so a resumed run keeps it)."""

    section = "maxnorm"

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        c = cfg.method.maxnorm
        if bool(c.reset_classifier):
            raise ConfigError("method.maxnorm.reset_classifier=true leaves no first-stage classifier to take the "
                              "max-norm radius from; set it to false")
        self.register_buffer("cb_weights", drw_weights(self.class_counts, float(c.cb_beta)))
        # set when the first stage's classifier is loaded (init_from); a resumed or evaluated run
        # takes it from its checkpoint
        self.register_buffer("maxnorm_radius", torch.tensor(float("nan")))

    def load_backbone_from(self, state_dict):
        super().load_backbone_from(state_dict)
        self.maxnorm_radius.fill_(float(maxnorm_threshold(self.classifier.weight, float(self.cfg.method.maxnorm.thresh))))

    def loss_fn(self, logits, y, feats):
        kind = self.cfg.method.maxnorm.loss
        if kind == "cb_bce":
            return cb_softmax_bce(logits, y, self.cb_weights)
        if kind == "cb_ce":
            return F.cross_entropy(logits.float(), y, weight=self.cb_weights)
        return F.cross_entropy(logits.float(), y)

    def after_step(self, state: StepState) -> None:
        if self.cfg.method.maxnorm.project == "step" or state.step == state.steps_per_epoch - 1:
            maxnorm_project_(self.classifier.weight.data, self.maxnorm_radius)

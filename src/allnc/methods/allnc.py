"""GBBN, the generalized bilateral-branch network, and AllNC on top of it.

BBN (Zhou et al. CVPR 2020) and every AllNC ablation are configurations of this one
method (see docs/method.md): HyCon on the conventional branch, P2P between the class
means of both branches and the classifier rows, and the cumulative adaptor alpha(t).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..losses import (
    ClassMeanMemory,
    HyConLoss,
    P2PLoss,
    balanced_softmax_ce,
    log_prior,
    logit_adjusted_ce,
)
from ..models import BranchedNet, build_backbone, build_classifier
from ..registry import Registry
from .base import METHODS, DataInfo, LoaderSpec, Method, StepState

ADAPTORS: Registry = Registry("adaptor schedule")


@ADAPTORS.register("parabolic")
def _parabolic(t: float, gamma: float, step_at: float) -> float:
    return 1.0 - t**gamma


@ADAPTORS.register("linear")
def _linear(t: float, gamma: float, step_at: float) -> float:
    return 1.0 - t


@ADAPTORS.register("cosine")
def _cosine(t: float, gamma: float, step_at: float) -> float:
    return math.cos(0.5 * math.pi * t)


@ADAPTORS.register("step")
def _step(t: float, gamma: float, step_at: float) -> float:
    return 1.0 if t < step_at else 0.0


def adaptor_alpha(schedule: str, epoch: int, epochs: int, gamma: float = 2.0, step_at: float = 0.8) -> float:
    """alpha(t) for epoch index t (0-based) of T epochs, t/T in [0, 1).

    parabolic: 1 - (t/T)^gamma (gamma = 2 is BBN's parabola); linear: 1 - t/T;
    cosine: cos(pi/2 * t/T); step: 1 before step_at*T, 0 after (decoupled training).
    """
    return float(ADAPTORS.get(schedule)(epoch / epochs, gamma, step_at))


@METHODS.register("gbbn")
class GBBN(Method):
    """Two branches, two samplers per step, mixed logits through one classifier.

    L = alpha [L_cls(z, y_u) + lambda_H HyCon(h_c, y_u)]
        + (1 - alpha) [L_cls(z, y_r) + lambda_P P2P([mu_c; mu_r], W)]
    with z = W [alpha h_c(x_u); (1 - alpha) h_r(x_r)] + b.
    """

    def __init__(self, cfg, info: DataInfo):
        super().__init__(cfg, info)
        g = cfg.method.gbbn
        self.loaders = (LoaderSpec("instance", 1), LoaderSpec(g.sampler, 1))
        self.net = BranchedNet(build_backbone(cfg.model, info.in_channels), mode=g.branch, share_branch=g.share_branch,
                               joint_trunk=g.joint_trunk)
        d = self.net.out_dim
        self.classifier = build_classifier(
            cfg.model.classifier, 2 * d, info.num_classes, bias=cfg.model.bias, etf_seed=cfg.model.etf_seed
        )
        self.register_buffer("log_prior", log_prior(self.class_counts))
        # alpha of the current epoch, a buffer so a checkpoint records the adaptor's position
        self.register_buffer("alpha", torch.ones(()))
        h, p = cfg.method.hycon, cfg.method.p2p
        mom = float(cfg.method.memory.momentum)
        self.use_hycon = bool(h.enabled) and float(h.weight) > 0
        self.use_p2p = bool(p.enabled) and float(p.weight) > 0
        if self.use_hycon or self.use_p2p:
            self.mem_c = ClassMeanMemory(info.num_classes, d, momentum=mom)
        if self.use_p2p:
            self.mem_r = ClassMeanMemory(info.num_classes, d, momentum=mom)
        if self.use_hycon:
            self.hycon = HyConLoss(tau=float(h.tau), sample_pairs=bool(h.sample_pairs), class_average=bool(h.class_average))
        if self.use_p2p:
            self.p2p = P2PLoss(tau=float(p.tau), form=str(p.form))

    # ---------------------------------------------------------------- schedule
    def on_epoch_start(self, epoch, epochs):
        g = self.cfg.method.gbbn
        self.alpha.fill_(adaptor_alpha(g.schedule, epoch, epochs, float(g.gamma), float(g.step_at)))

    def cls_loss(self, logits, y):
        kind = self.cfg.method.gbbn.cls_loss
        if kind == "la":
            return logit_adjusted_ce(logits, y, self.log_prior, tau=float(self.cfg.method.la.tau))
        if kind == "bsce":
            return balanced_softmax_ce(logits, y, self.log_prior)
        return F.cross_entropy(logits, y)

    # ---------------------------------------------------------------- training
    def training_loss(self, batches, state: StepState):
        xu, yu = batches[0]["x"], batches[0]["y"]
        xr, yr = batches[1]["x"], batches[1]["y"]
        a = self.alpha  # a 0-d tensor: no host sync, nothing for a compiled step to specialise on
        h_c, h_r = self.net.forward_both(xu, xr)
        logits = self.classifier(torch.cat([a * h_c, (1 - a) * h_r], dim=1))
        l_u = self.cls_loss(logits, yu)
        l_r = self.cls_loss(logits, yr)
        loss = a * l_u + (1 - a) * l_r
        logs = {"loss_cls": loss.detach(), "alpha": a.detach()}

        if self.use_hycon or self.use_p2p:
            hc32 = h_c.float()
            stats_c = self.mem_c.batch_stats(hc32, yu)  # one pass: the losses' means and the update
            means_c, present_c = self.mem_c.mix(*stats_c)
        if self.use_hycon:
            cfg_h = self.cfg.method.hycon
            l_h = self.hycon(hc32, yu, self.mem_c.means.detach(), valid=self.mem_c.seen | present_c)
            loss = loss + a * float(cfg_h.weight) * l_h
            logs["loss_hycon"] = l_h.detach()
        if self.use_p2p:
            stats_r = self.mem_r.batch_stats(h_r.float(), yr)
            means_r, present_r = self.mem_r.mix(*stats_r)
            valid = (self.mem_c.seen | present_c) & (self.mem_r.seen | present_r)
            mu = torch.cat([means_c, means_r], dim=1)
            l_p = self.p2p(mu, self.classifier.weight.float(), valid=valid)
            loss = loss + (1 - a) * float(self.cfg.method.p2p.weight) * l_p
            logs["loss_p2p"] = l_p.detach()
            self.mem_r.update_from_stats(*stats_r)
        if self.use_hycon or self.use_p2p:
            self.mem_c.update_from_stats(*stats_c)
        return loss, logs

    # ---------------------------------------------------------------- inference
    def features(self, x):
        h = self.net.inference_features(x)
        return h, self.classifier(h)

    def classifier_weight(self):
        return self.classifier.weight, getattr(self.classifier, "bias", None)

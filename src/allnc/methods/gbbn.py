"""GBBN, the generalized bilateral-branch network, and AllNC on top of it.

BBN (Zhou et al. CVPR 2020) and every AllNC ablation are configurations of this one
method (see docs/method.md): HyCon on the conventional branch, P2P between the class
means of both branches and the classifier rows, and the cumulative adaptor alpha(t).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from .. import dist
from ..data import has_validation
from ..data.samplers import MODES
from ..losses import ClassMeanMemory, balanced_softmax_ce, log_prior, logit_adjusted_ce
from ..models import BranchedNet, build_backbone, build_classifier
from ..registry import Registry
from . import nc_terms
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


def effective_mix(mix: str, has_val: bool) -> str:
    """The inference mix a run uses: ``auto`` is ``val`` with a validation split, else ``final``."""
    if mix == "auto":
        return "val" if has_val else "final"
    return mix


#: the inference mixes a that a validation split chooses from (in training or post hoc)
MIX_GRID = [round(0.05 * i, 2) for i in range(21)]


def choose_mix(acc_by_a: dict[float, float]) -> float:
    """The mix a with the best validation accuracy; ties go to the a nearest 0.5 (BBN's mix)."""
    best = max(acc_by_a.values())
    return min((a for a, v in acc_by_a.items() if v == best), key=lambda a: abs(a - 0.5))


@dataclass
class GBBNConfig:
    choices: ClassVar[dict] = {
        "sampler": MODES, "schedule": lambda: tuple(ADAPTORS.names()), "branch": ("last_block", "last_stage"),
        "cls_loss": ("ce", "la", "bsce"), "inference_mix": ("half", "final", "val", "auto"),
    }
    # re-balancing sampler of branch r: reversed | balanced | sqrt
    sampler: str = "reversed"
    # parabolic | linear | cosine | step
    schedule: str = "parabolic"
    # exponent of the parabolic adaptor alpha = 1 - (t/T)^gamma (2 = BBN)
    gamma: float = 2.0
    # epoch fraction where the step schedule switches from branch c to branch r
    step_at: float = 0.8
    # last_block | last_stage: what the two branches own (the rest is the shared trunk)
    branch: str = "last_block"
    # share the branch weights too (a single-branch GBBN)
    share_branch: bool = False
    # run the trunk once on both batches (BN sees their union) instead of once per batch (BBN)
    joint_trunk: bool = False
    # ce | la | bsce: the classification loss on the mixed logits
    cls_loss: str = "ce"
    # the mixed feature is mix_scale * [alpha h_c ; (1 - alpha) h_r], in training and at
    # inference; BBN's released code uses 2 (then the bias weighs half as much against W h), and
    # so does AllNC's config (chosen on validation, docs/method.md "Defaults")
    mix_scale: float = 1.0
    # inference mix [a h_c ; (1 - a) h_r]: half (a = 0.5, BBN, in every evaluation), final (a =
    # the adaptor's last alpha: progressive decoupling ends with the re-balancing branch in
    # charge), val (a chosen after training on the validation split, data.val_per_class), auto
    # (val when the run has a validation split, else final); with final and val the evaluations
    # during training use the epoch's own alpha, the mix the classifier is learning
    inference_mix: str = "half"


@METHODS.register("gbbn", section="gbbn", config=GBBNConfig)
class GBBN(Method):
    """Two branches, two samplers per step, mixed logits through one classifier.

    L = alpha [L_cls(z, y_u) + lambda_H HyCon(h_c, y_u)]
        + (1 - alpha) [L_cls(z, y_r) + lambda_P P2P([mu_c; mu_r], W) (+ lambda_H HyCon(h_r, y_r))]
    with z = W s [alpha h_c(x_u); (1 - alpha) h_r(x_r)] + b (s = method.gbbn.mix_scale; the
    HyCon term on the re-balancing branch only with method.hycon.anchors=both).
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
        self.mix_scale = float(g.mix_scale)
        self.register_buffer("log_prior", log_prior(self.class_counts))
        # alpha of the current epoch, a buffer so a checkpoint records the adaptor's position
        self.register_buffer("alpha", torch.ones(()))
        # the inference mix a of [a h_c ; (1 - a) h_r] (a buffer: checkpoints hold a chosen one)
        final = adaptor_alpha(g.schedule, int(cfg.train.epochs) - 1, int(cfg.train.epochs), float(g.gamma),
                              float(g.step_at))
        self.inference_mix = effective_mix(g.inference_mix, has_validation(cfg))
        self.register_buffer("infer_alpha", torch.tensor(final if self.inference_mix == "final" else 0.5))
        self.use_hycon, self.use_p2p = nc_terms.switches(cfg)
        self.hycon_both = self.use_hycon and cfg.method.hycon.anchors == "both"
        if self.use_hycon or self.use_p2p:
            self.mem_c = nc_terms.make_memory(cfg, info.num_classes, d)
        if self.use_p2p or self.hycon_both:
            self.mem_r = nc_terms.make_memory(cfg, info.num_classes, d)
        if self.use_hycon:
            self.hycon = nc_terms.make_hycon(cfg)
        if self.use_p2p:
            self.p2p = nc_terms.make_p2p(cfg)

    # ---------------------------------------------------------------- schedule
    def on_epoch_start(self, epoch, epochs):
        g = self.cfg.method.gbbn
        self.alpha.fill_(adaptor_alpha(g.schedule, epoch, epochs, float(g.gamma), float(g.step_at)))
        if self.inference_mix != "half":
            # until the run ends (final) or a validation split chooses (val), the model predicts
            # with the mix its classifier is learning: the epochs' evaluations describe the model
            # as trained, and the last epoch's alpha is the final mix
            self.infer_alpha.fill_(self.alpha)

    def cls_loss(self, logits, y):
        kind = self.cfg.method.gbbn.cls_loss
        if kind == "la":
            return logit_adjusted_ce(logits, y, self.log_prior, tau=float(self.cfg.method.la.tau))
        if kind == "bsce":
            return balanced_softmax_ce(logits, y, self.log_prior)
        return F.cross_entropy(logits, y)

    def _hycon(self, mem: ClassMeanMemory, h32, y, means, present):
        return nc_terms.hycon_term(self.hycon, self.cfg, mem, h32, y, means, present)

    # ---------------------------------------------------------------- training
    def training_loss(self, batches, state: StepState):
        xu, yu = batches[0]["x"], batches[0]["y"]
        xr, yr = batches[1]["x"], batches[1]["y"]
        a = self.alpha  # a 0-d tensor: no host sync, nothing for a compiled step to specialise on
        h_c, h_r = self.net.forward_both(xu, xr)
        mixed = torch.cat([a * h_c, (1 - a) * h_r], dim=1)
        logits = self.classifier(mixed * self.mix_scale if self.mix_scale != 1.0 else mixed)
        l_u = self.cls_loss(logits, yu)
        l_r = self.cls_loss(logits, yr)
        loss = a * l_u + (1 - a) * l_r
        logs = {"loss_cls": loss.detach(), "alpha": a.detach()}

        w_h = float(self.cfg.method.hycon.weight)
        if self.use_hycon or self.use_p2p:
            hc32 = h_c.float()
            stats_c = self.mem_c.batch_stats(hc32, yu)  # one pass: the losses' means and the update
            means_c, present_c = self.mem_c.mix(*stats_c)
        if self.use_p2p or self.hycon_both:
            hr32 = h_r.float()
            stats_r = self.mem_r.batch_stats(hr32, yr)
            means_r, present_r = self.mem_r.mix(*stats_r)
        if self.use_hycon:
            l_h = self._hycon(self.mem_c, hc32, yu, means_c, present_c)
            loss = loss + a * w_h * l_h
            logs["loss_hycon"] = l_h.detach()
        if self.hycon_both:
            l_hr = self._hycon(self.mem_r, hr32, yr, means_r, present_r)
            loss = loss + (1 - a) * w_h * l_hr
            logs["loss_hycon_r"] = l_hr.detach()
        if self.use_p2p:
            valid = (self.mem_c.seen | present_c) & (self.mem_r.seen | present_r)
            mu = torch.cat([means_c, means_r], dim=1)
            l_p = self.p2p(mu, self.classifier.weight.float(), valid=valid)
            loss = loss + (1 - a) * float(self.cfg.method.p2p.weight) * l_p
            logs["loss_p2p"] = l_p.detach()
        if self.use_p2p or self.hycon_both:
            self.mem_r.update_from_stats(*stats_r)
        if self.use_hycon or self.use_p2p:
            self.mem_c.update_from_stats(*stats_c)
        return loss, logs

    # ---------------------------------------------------------------- inference
    def _mix(self, h_c, h_r, a):
        f = torch.cat([a * h_c, (1 - a) * h_r], dim=1)
        return f * self.mix_scale if self.mix_scale != 1.0 else f

    def features(self, x):
        h_c, h_r = self.net.both_on(x)
        h = self._mix(h_c, h_r, self.infer_alpha.to(h_c.dtype))
        return h, self.classifier(h)

    def classifier_weight(self):
        return self.classifier.weight, getattr(self.classifier, "bias", None)

    def branch_features(self, x):
        """``(h_c, h_r)``: both branches' features of the same images, what an inference mix mixes."""
        return self.net.both_on(x)

    def mixed_logits(self, h_c, h_r, a):
        """The logits of the inference mix ``a``: W s [a h_c ; (1 - a) h_r] + b."""
        return self.classifier(self._mix(h_c, h_r, a))

    @torch.no_grad()
    def calibrate(self, val_batches) -> dict | None:
        """method.gbbn.inference_mix=val (or auto with a validation split): the mix a in
        {0, 0.05, ..., 1} with the best validation accuracy (the split is balanced: the mean of
        per-class accuracies); ties go to the a nearest 0.5, BBN's mix."""
        if self.inference_mix != "val":
            return None
        g = self.cfg.method.gbbn
        final = adaptor_alpha(g.schedule, int(self.cfg.train.epochs) - 1, int(self.cfg.train.epochs), float(g.gamma),
                              float(g.step_at))
        grid = [*MIX_GRID, final]  # the last one reported as "final" too
        device = self.infer_alpha.device
        correct = torch.zeros(len(grid), dtype=torch.float64, device=device)
        total = torch.zeros((), dtype=torch.float64, device=device)
        for x, y in val_batches():
            h_c, h_r = self.net.both_on(x)
            h_c, h_r = h_c.float(), h_r.float()
            for i, a in enumerate(grid):
                pred = self.mixed_logits(h_c, h_r, a).argmax(dim=1)
                correct[i] += (pred == y).sum()
            total += len(y)
        # under torchrun each rank saw its shard of the split: every rank must choose from the
        # whole split's counts, or the ranks would keep different mixes
        dist.all_reduce_sum(correct, total)
        acc = (100.0 * correct / total.clamp(min=1)).tolist()
        a = choose_mix(dict(zip(grid[:-1], acc[:-1])))
        self.infer_alpha.fill_(a)
        table = dict(zip(map(str, grid[:-1]), [round(v, 3) for v in acc[:-1]]))
        table["final"] = round(acc[-1], 3)
        return {"inference_alpha": a, "final_alpha": round(final, 4), "val_top1_by_alpha": table}

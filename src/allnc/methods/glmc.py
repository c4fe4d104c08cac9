"""GLMC: global and local mixture consistency cumulative learning (Du et al. CVPR 2023).

Each step draws two batches of the same size, each image in two augmented views: an
instance-sampled batch u (``method.sampler``) and a re-sampled batch r, whose class k is
drawn in proportion to ``n_k ** (1 - resample_weighting)``. One ``lam ~ Beta(a, a)`` per step
makes

* a global mixture: MixUp of u's first views with r's first views, ``lam u1 + (1 - lam) r1``;
* a local mixture: CutMix of u's second views with r's second views, one box per step of
  ``ceil(sqrt(1 - lam) H) x ceil(sqrt(1 - lam) W)`` cells around a uniform centre (clipped at
  the border), holding r2's pixels;

both labelled ``lam y_u + (1 - lam) y_r`` (one-hot vectors; ``cutmix_label: area`` takes the
box's true share instead, as CutMix does). The backbone reads each mixture in its own pass.
Two linear heads read the feature h: a uniform head trained on the mixed one-hot targets and
a re-balanced head trained on the same targets with each one-hot vector scaled by its
class's weight ``w_k ~ n_k ** -label_weighting`` (``sum_k w_k = K``); the re-balanced head
makes the predictions. A projection z = P h and a prediction p = Q z give the consistency of
the two mixtures, SimSiam's negative cosine in both directions with a stop-gradient on z.
The loss of epoch t of T is

    alpha [CE_u(mix) + CE_u(cut)] + (1 - alpha) [CE_w(mix) + CE_w(cut)]
        + contrast_weight [-cos(p_mix, sg z_cut) - cos(p_cut, sg z_mix)]

with BBN's cumulative alpha = 1 - (t / T) ** 2 (``schedule``, ``gamma``). docs/baselines.md
compares this with the released code.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..losses import class_weight, simsiam_loss, soft_target_ce
from ..models import build_classifier
from .base import METHODS, LoaderSpec, StepState, torch_seeded_rng
from .gbbn import ADAPTORS, adaptor_alpha
from .single import SingleBranch


@dataclass
class GLMCConfig:
    choices: ClassVar[dict] = {"cutmix_label": ("lam", "area"), "schedule": lambda: tuple(ADAPTORS.names())}
    # q: the re-sampling loader draws class k in proportion to n_k ** (1 - q) (0: like the
    # instance sampler, with replacement; 1: class-balanced)
    resample_weighting: float = 0.0
    # the re-balanced head's class weights: w_k proportional to n_k ** -label_weighting, sum K
    label_weighting: float = 1.2
    # weight of the global-local mixture consistency (the SimSiam term)
    contrast_weight: float = 1.0
    # lambda ~ Beta(mix_alpha, mix_alpha), one draw per step (the released code draws Beta(1, 1))
    mix_alpha: float = 1.0
    # the CutMix label's share of y_u: lam (the released code) or area (1 - the box's share)
    cutmix_label: str = "lam"
    # width of the projection and prediction heads' output (the released code: 128 for the
    # CIFAR ResNets, 256 for ResNeXt-50)
    proj_dim: int = 128
    # the cumulative factor alpha(t) of the uniform terms: parabolic 1 - (t/T)^gamma (the
    # released code, gamma 2), or another adaptor of GBBN's
    schedule: str = "parabolic"
    gamma: float = 2.0


@torch.compiler.disable
def glmc_draw(h: int, w: int, alpha: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """One step's draws: ``lam ~ Beta(alpha, alpha)`` (a 0-d float tensor) and the CutMix box
    ``[top, bottom, left, right)`` (a long tensor of 4), as the module docstring says.

    Kept out of a compiled step, and returned as tensors, so that a compiled graph sees
    inputs rather than constants that change every step. The draws come from torch's global
    generator, so a seeded run makes the same ones compiled or not."""
    rng = torch_seeded_rng()
    lam = float(rng.beta(alpha, alpha))
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(math.ceil(h * cut)), int(math.ceil(w * cut))
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    box = [min(max(cy - ch // 2, 0), h), min(max(cy + ch // 2, 0), h),
           min(max(cx - cw // 2, 0), w), min(max(cx + cw // 2, 0), w)]
    return torch.tensor(lam, device=device), torch.tensor(box, device=device)


def box_mask(box: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The H x W boolean mask of ``box = [top, bottom, left, right)``."""
    rows = torch.arange(h, device=box.device)
    cols = torch.arange(w, device=box.device)
    in_r = (rows >= box[0]) & (rows < box[1])
    in_c = (cols >= box[2]) & (cols < box[3])
    return in_r[:, None] & in_c[None, :]


def glmc_mixtures(u1, u2, r1, r2, lam: torch.Tensor, box: torch.Tensor):
    """(MixUp of u1 and r1, CutMix of u2 and r2, the box's share of the image)."""
    h, w = u2.shape[-2:]
    mask = box_mask(box, h, w)
    lam = lam.to(u1.dtype)
    mixed = lam * u1 + (1 - lam) * r1
    cut = torch.where(mask, r2, u2)
    return mixed, cut, mask.float().mean()


@METHODS.register("glmc", section="glmc", config=GLMCConfig)
class GLMC(SingleBranch):
    """GLMC (Du et al. CVPR 2023); the module docstring gives the loss. ``classifier`` is the
    re-balanced head (the predictor), ``uniform_head`` the head of the uniform terms."""

    classifier_kind = ""

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        c = cfg.method.glmc
        self.refuse_label_mixing("GLMC mixes every image's label, and HyCon and P2P need whole labels",
                                 "GLMC mixes its batches itself")
        power = 1.0 - float(c.resample_weighting)
        self.loaders = (LoaderSpec(cfg.method.sampler, 2), LoaderSpec("power", 2, power=power))
        d = self.backbone.out_dim
        self.uniform_head = build_classifier(str(cfg.model.classifier), d, info.num_classes, bias=cfg.model.bias,
                                             etf_seed=cfg.model.etf_seed)
        self.proj = nn.Linear(d, int(c.proj_dim))
        self.pred = nn.Linear(int(c.proj_dim), int(c.proj_dim))
        for lin in (self.proj, self.pred):  # the released code's initialisation of every linear layer
            nn.init.kaiming_normal_(lin.weight)
        self.register_buffer("label_weights", class_weight(self.class_counts, float(c.label_weighting)))
        # alpha of the current epoch, a buffer so a checkpoint records the schedule's position
        self.register_buffer("alpha", torch.ones(()))

    def on_epoch_start(self, epoch, epochs):
        c = self.cfg.method.glmc
        self.alpha.fill_(adaptor_alpha(str(c.schedule), epoch, epochs, float(c.gamma)))

    def training_loss(self, batches, state: StepState):
        c = self.cfg.method.glmc
        (u1, u2), y_u = batches[0]["x"], batches[0]["y"]
        (r1, r2), y_r = batches[1]["x"], batches[1]["y"]
        lam, box = glmc_draw(u2.shape[-2], u2.shape[-1], float(c.mix_alpha), u1.device)
        mixed, cut, share = glmc_mixtures(u1, u2, r1, r2, lam, box)
        lam_cut = lam if c.cutmix_label == "lam" else 1 - share
        k = self.num_classes
        oh_u, oh_r = F.one_hot(y_u, k).float(), F.one_hot(y_r, k).float()
        wt_u, wt_r = oh_u * self.label_weights[y_u, None], oh_r * self.label_weights[y_r, None]
        h_mix, h_cut = self.backbone(mixed), self.backbone(cut)  # one pass each, as the released code
        mixtures = ((h_mix, lam), (h_cut, lam_cut))  # each mixture's targets: a share s of y_u, 1 - s of y_r
        ce_u = [soft_target_ce(self.uniform_head(h), s * oh_u + (1 - s) * oh_r) for h, s in mixtures]
        ce_w = [soft_target_ce(self.classifier(h), s * wt_u + (1 - s) * wt_r) for h, s in mixtures]
        uniform, rebal = ce_u[0] + ce_u[1], ce_w[0] + ce_w[1]  # no "0 +": a compiled graph folds it away
        z_mix, z_cut = self.proj(h_mix), self.proj(h_cut)
        consist = simsiam_loss(self.pred(z_mix), z_cut) + simsiam_loss(self.pred(z_cut), z_mix)
        a = self.alpha
        cls = a * uniform + (1 - a) * rebal
        loss = cls + float(c.contrast_weight) * consist
        return loss, {"loss_cls": cls.detach(), "loss_mc": consist.detach(), "alpha": a.detach()}

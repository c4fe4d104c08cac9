"""The one home of the HyCon / P2P / class-mean-memory wiring, for every method that uses
them (the two-branch GBBN behind AllNC, and the single-branch CE + HyCon / CE + P2P
ablations): their config sections, which are on, and how each loss reads a memory.

Config sections (``method.hycon``, ``method.p2p``, ``method.memory``) are registered here
and composed into the default config tree with every method's own section.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

import torch

from ..losses import ClassMeanMemory, HyConLoss, P2PLoss, centred_mean
from ..losses.p2p import FORMS
from .base import SECTIONS


@SECTIONS.register("hycon")
@dataclass
class HyConConfig:
    choices: ClassVar[dict] = {"anchors": ("conventional", "both"), "centre_gradient": ("none", "batch")}
    # HyCon on (AllNC; the CE + HyCon ablation)
    enabled: bool = False
    # lambda_H, its weight in the loss
    weight: float = 1.0
    # temperature
    tau: float = 0.1
    # sample-to-sample pairs besides anchor-to-mean (false: the pure anchor-to-mean contrast)
    sample_pairs: bool = True
    # average each class's candidates in the denominator (Balanced Contrastive Learning's rule)
    class_average: bool = True
    # contrast directions about the class-balanced global mean of the memory (the centred
    # geometry of P2P and the NC metrics) instead of about the origin
    centre: bool = False
    # with centre: none = the centre is a constant of the step (the memory's mean, detached), so
    # the contrast pushes every feature along one common direction as well; batch = its value
    # is the memory's but its gradient is that of the batch's class-balanced mean of class
    # means, so that shifting every feature by one vector changes nothing (the contrast is
    # translation-invariant, as the centred geometry it measures)
    centre_gradient: str = "none"
    # GBBN: anchors from the conventional branch only, or also from the re-balancing branch
    # (its features against its own class means, weighted 1 - alpha: tail classes anchored)
    anchors: str = "conventional"


@SECTIONS.register("p2p")
@dataclass
class P2PConfig:
    choices: ClassVar[dict] = {"form": FORMS}
    # P2P on (AllNC; the CE + P2P ablation)
    enabled: bool = False
    # lambda_P, its weight in the loss
    weight: float = 1.0
    # temperature of the peer contrast
    tau: float = 0.1
    # contrast | regression
    form: str = "contrast"
    # weight of an equinorm term (squared coefficient of variation of the classifier-row and
    # centred-mean norms); 0 = off: the cosines alone leave the norms free
    equinorm: float = 0.0


@SECTIONS.register("memory")
@dataclass
class MemoryConfig:
    # beta of the class-mean EMA: mu <- beta mu + (1 - beta) batch mean
    momentum: float = 0.9


def switches(cfg) -> tuple[bool, bool]:
    """(HyCon on, P2P on): enabled with a positive weight."""
    h, p = cfg.method.hycon, cfg.method.p2p
    return bool(h.enabled) and float(h.weight) > 0, bool(p.enabled) and float(p.weight) > 0


def make_memory(cfg, num_classes: int, dim: int) -> ClassMeanMemory:
    return ClassMeanMemory(num_classes, dim, momentum=float(cfg.method.memory.momentum))


def make_hycon(cfg) -> HyConLoss:
    h = cfg.method.hycon
    return HyConLoss(tau=float(h.tau), sample_pairs=bool(h.sample_pairs), class_average=bool(h.class_average))


def make_p2p(cfg) -> P2PLoss:
    p = cfg.method.p2p
    return P2PLoss(tau=float(p.tau), form=str(p.form), equinorm=float(p.equinorm))


def hycon_term(hycon: HyConLoss, cfg, mem: ClassMeanMemory, h32: torch.Tensor, y: torch.Tensor,
               batch_means: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """HyCon of features ``h32`` against the memory's class means of the classes seen before this
    step, centred on their class-balanced mean when ``method.hycon.centre``. A class present for
    the first time has no memory yet (its row is zero until the update after the step): it is
    left out, as an unseen class (HyCon reads the detached memory only). ``batch_means`` and
    ``present`` are the step's ``mem.mix``: with ``centre_gradient=batch`` the centre takes the
    gradient of the class-balanced mean of the present classes' batch means."""
    valid = mem.seen
    centre: Optional[torch.Tensor] = centred_mean(mem.means, valid) if cfg.method.hycon.centre else None
    if centre is not None and cfg.method.hycon.centre_gradient == "batch":
        m = centred_mean(batch_means, present)
        centre = centre + (m - m.detach())  # the memory's value, the batch's gradient
    return hycon(h32, y, mem.means.detach(), valid=valid, centre=centre)

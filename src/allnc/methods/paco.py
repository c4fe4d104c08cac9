"""PaCo: parametric contrastive learning (Cui et al. ICCV 2021).

Each step reads every image in two views. The query encoder (the backbone, a projection MLP
and the linear classifier) reads the first; a momentum copy of backbone and projection, the
key encoder, reads the second without gradient. The step

1. moves the key encoder towards the query encoder, ``theta_k <- m theta_k + (1 - m) theta_q``;
2. takes the unit projections q of the first views (the anchors, with gradient) and k of the
   second views (the keys), and the classifier's logits z on the first views' features;
3. computes ``paco_loss`` (``allnc.losses.paco``) with the candidates q, k and the queue of
   earlier keys, the class logits adjusted by ``la_tau log pi``;
4. puts k and its labels in the queue, over the oldest keys.

The classifier's plain logits make the predictions (logit adjustment is in the loss only).
docs/baselines.md compares this with the released code.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar, Optional

import torch
import torch.nn.functional as F

from .. import dist
from ..data.augment import PRESETS
from ..data.fast import mix_seed
from ..losses import KeyQueue, log_prior, paco_loss
from ..models import ProjectionMLP
from .base import METHODS, LoaderSpec, StepState
from .single import SingleBranch


@dataclass
class PaCoConfig:
    choices: ClassVar[dict] = {"key_augment": PRESETS, "query_augment": (None, *PRESETS)}
    # weight of each same-class sample among an anchor's positives (the released CIFAR command: 0.01;
    # ImageNet-LT and iNaturalist: 0.05)
    alpha: float = 0.01
    # weight of the anchor's class (its adjusted logit) among the positives
    beta: float = 1.0
    # weight of the samples in the softmax's denominator (the classes weigh 1)
    gamma: float = 1.0
    # temperature of the sample similarities (the released CIFAR command: 0.05; ImageNet-LT: 0.2)
    temperature: float = 0.05
    # logit adjustment of the class logits in the loss: + la_tau * log(prior)
    la_tau: float = 1.0
    # number of earlier keys kept (the released CIFAR command: 1024; ImageNet-LT and iNaturalist: 8192)
    queue_size: int = 1024
    # output width of the projection MLP (the released CIFAR command: 32; ImageNet-LT: 128)
    proj_dim: int = 32
    # hidden width of the projection MLP; 0 = the feature width (as the released code)
    proj_hidden: int = 0
    # momentum of the key encoder
    momentum: float = 0.999
    # preset of the first view (anchors and classifier); null = data.augment (the released CIFAR
    # code uses its strong augmentation there: the *_paco_strong configs)
    query_augment: Optional[str] = None
    # preset of the second view (the keys): sim, SimAugment (the released code's SimCLR-style view)
    key_augment: str = "sim"
    # under torchrun, the key encoder reads a global batch shuffled across the processes and the
    # keys are put back in order (MoCo's shuffling BN, as released), so its batch norm does not
    # see the statistics of the queries' own images; no effect in one process or with
    # train.sync_bn (batch norm over the global batch)
    shuffle_bn: bool = True


@METHODS.register("paco", section="paco", config=PaCoConfig)
class PaCo(SingleBranch):
    """PaCo (Cui et al. ICCV 2021); the module docstring gives the step. ``key_backbone`` and
    ``key_proj`` are the momentum encoder (no gradient, not in the optimizer, in the
    checkpoint); ``queue`` holds the earlier keys."""

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        c = cfg.method.paco
        self.refuse_label_mixing("PaCo is not built with HyCon or P2P", "PaCo's positives need whole labels")
        qa = str(c.query_augment or cfg.data.augment)
        self.loaders = (LoaderSpec(cfg.method.sampler, 2, (qa, str(c.key_augment))),)
        d = self.backbone.out_dim
        self.proj = ProjectionMLP(d, int(c.proj_hidden) or d, int(c.proj_dim))
        self.key_backbone = copy.deepcopy(self.backbone)
        self.key_proj = copy.deepcopy(self.proj)
        for p in self.key_parameters():
            p.requires_grad_(False)
        self.queue = KeyQueue(int(c.queue_size), int(c.proj_dim))
        self.register_buffer("log_prior", log_prior(self.class_counts))

    def query_parameters(self) -> list[torch.nn.Parameter]:
        return [*self.backbone.parameters(), *self.proj.parameters()]

    def key_parameters(self) -> list[torch.nn.Parameter]:
        return [*self.key_backbone.parameters(), *self.key_proj.parameters()]

    @torch.no_grad()
    def momentum_update(self) -> None:
        m = float(self.cfg.method.paco.momentum)
        for pk, pq in zip(self.key_parameters(), self.query_parameters()):
            pk.lerp_(pq.detach(), 1.0 - m)

    def training_loss(self, batches, state: StepState):
        c = self.cfg.method.paco
        (v_q, v_k), y = batches[0]["x"], batches[0]["y"]
        h = self.backbone(v_q)
        logits = self.classifier(h)
        q = F.normalize(self.proj(h).float(), dim=1)
        with torch.no_grad():
            self.momentum_update()
            k = F.normalize(self.encode_keys(v_k, state).float(), dim=1)
        keys = torch.cat([k, self.queue.keys], 0)  # buffers: no gradient
        key_labels = torch.cat([y, self.queue.labels], 0)
        loss = paco_loss(q, y, logits, keys, key_labels, self.log_prior, alpha=float(c.alpha), beta=float(c.beta),
                         gamma=float(c.gamma), temperature=float(c.temperature), la_tau=float(c.la_tau))
        self.queue.enqueue(k, y)
        return loss, {"loss_cls": loss.detach()}

    @torch.no_grad()
    def encode_keys(self, v_k: torch.Tensor, state: StepState) -> torch.Tensor:
        """The key encoder's projections of the second views; under torchrun with
        ``shuffle_bn`` (and no global-batch BN) computed in shuffled batches
        (``dist.shuffled_forward``), the permutation drawn from the seed, epoch and step, so
        every process draws the same one without a message."""
        def enc(v):
            return self.key_proj(self.key_backbone(v))

        if not (dist.is_dist() and self.cfg.method.paco.shuffle_bn and not self.cfg.train.sync_bn):
            return enc(v_k)
        g = torch.Generator().manual_seed(mix_seed(int(self.cfg.seed), state.epoch, state.step))
        perm = torch.randperm(v_k.shape[0] * dist.world_size(), generator=g).to(v_k.device)
        return dist.shuffled_forward(enc, v_k, perm)

    def load_backbone_from(self, state_dict: dict) -> None:
        super().load_backbone_from(state_dict)
        self.key_backbone.load_state_dict(self.backbone.state_dict())

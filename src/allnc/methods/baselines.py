"""Single-branch methods: cross-entropy and its re-balanced forms, LDAM-DRW, the fixed ETF
classifier with dot regression, balanced contrastive learning, and classifier re-training.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..losses import (
    BalancedSupConLoss,
    ClassMeanMemory,
    HyConLoss,
    P2PLoss,
    LDAMLoss,
    balanced_softmax_ce,
    centred_mean,
    dot_regression_loss,
    drw_weights,
    log_prior,
    logit_adjusted_ce,
)
from ..models import NormedLinear, build_backbone, build_classifier
from .base import METHODS, DataInfo, LoaderSpec, Method, StepState, mixup


class SingleBranch(Method):
    """Backbone + classifier; subclasses define the loss on (features, logits, labels)."""

    classifier_kind = "linear"

    def __init__(self, cfg, info: DataInfo):
        super().__init__(cfg, info)
        self.loaders = (LoaderSpec(cfg.method.sampler, 1),)
        self.backbone = build_backbone(cfg.model, info.in_channels)
        kind = self.classifier_kind or cfg.model.classifier
        self.classifier = build_classifier(
            kind, self.backbone.out_dim, info.num_classes, bias=cfg.model.bias, etf_seed=cfg.model.etf_seed
        )
        self._build_nc_terms(cfg)

    def _build_nc_terms(self, cfg) -> None:
        """Optional HyCon and P2P terms on a single branch (the CE + HyCon and CE + P2P
        ablations of AllNC); both read the features the classifier reads."""
        h, p = cfg.method.hycon, cfg.method.p2p
        self.use_hycon = bool(h.enabled) and float(h.weight) > 0
        self.use_p2p = bool(p.enabled) and float(p.weight) > 0
        if (self.use_hycon or self.use_p2p) and float(cfg.train.mixup) > 0:
            raise ConfigError("train.mixup mixes labels, which HyCon and P2P need whole; turn one of them off")
        if self.use_hycon or self.use_p2p:
            self.mem = ClassMeanMemory(self.num_classes, self.backbone.out_dim, momentum=float(cfg.method.memory.momentum))
        if self.use_hycon:
            self.hycon = HyConLoss(tau=float(h.tau), sample_pairs=bool(h.sample_pairs), class_average=bool(h.class_average))
        if self.use_p2p:
            self.p2p = P2PLoss(tau=float(p.tau), form=str(p.form), equinorm=float(p.equinorm))

    def nc_terms(self, h: torch.Tensor, y: torch.Tensor, logs: dict) -> torch.Tensor | None:
        """The HyCon/P2P terms, or None without them (no ``+ 0`` in the graph: inductor folds
        it away and, torch 2.11 on the CPU, then returned a loss without a gradient)."""
        if not (self.use_hycon or self.use_p2p):
            return None
        h = h.float()
        stats = self.mem.batch_stats(h, y)  # one pass: the losses' means and the update
        means, present = self.mem.mix(*stats)
        valid = self.mem.seen | present
        extra = h.new_zeros(())
        if self.use_hycon:
            centre = centred_mean(self.mem.means, valid) if self.cfg.method.hycon.centre else None
            l_h = self.hycon(h, y, self.mem.means.detach(), valid=valid, centre=centre)
            extra = extra + float(self.cfg.method.hycon.weight) * l_h
            logs["loss_hycon"] = l_h.detach()
        if self.use_p2p:
            l_p = self.p2p(means, self.classifier.weight.float(), valid=valid)
            extra = extra + float(self.cfg.method.p2p.weight) * l_p
            logs["loss_p2p"] = l_p.detach()
        self.mem.update_from_stats(*stats)
        return extra

    def head_input(self, h: torch.Tensor) -> torch.Tensor:
        return h

    def features(self, x):
        h = self.head_input(self.backbone(x))
        return h, self.classifier(h)

    def classifier_weight(self):
        return self.classifier.weight, getattr(self.classifier, "bias", None)

    def loss_fn(self, logits: torch.Tensor, y: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def training_loss(self, batches, state: StepState):
        b = batches[0]
        x, y = b["x"], b["y"]
        alpha = float(self.cfg.train.mixup)
        if alpha > 0:
            x, ya, yb, lam = mixup(x, y, alpha)
            h, logits = self.features(x)
            loss = lam * self.loss_fn(logits, ya, h) + (1 - lam) * self.loss_fn(logits, yb, h)
        else:
            h, logits = self.features(x)
            loss = self.loss_fn(logits, y, h)
        logs = {"loss_cls": loss.detach()}
        extra = self.nc_terms(h, y, logs)
        return (loss if extra is None else loss + extra), logs

    def load_backbone_from(self, state_dict: dict) -> None:
        sub = {k[len("backbone."):]: v for k, v in state_dict.items() if k.startswith("backbone.")}
        if not sub:
            raise ConfigError(
                "init_from: the run's checkpoint has no single-branch backbone (was it a GBBN/BBN/AllNC run?); "
                "cRT starts from a CE-family, LDAM, ETF or BCL run"
            )
        missing, unexpected = self.backbone.load_state_dict(sub, strict=False)
        if missing or unexpected:
            raise ConfigError(
                f"init_from: backbone mismatch (missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]}); "
                "use the same model.name and model.width as the run you start from"
            )


@METHODS.register("ce")
class CrossEntropy(SingleBranch):
    """Plain cross-entropy; with method.sampler != instance it is re-sampling."""

    classifier_kind = ""

    def loss_fn(self, logits, y, feats):
        return F.cross_entropy(logits, y)


@METHODS.register("la")
class LogitAdjusted(SingleBranch):
    """Logit-adjusted cross-entropy (Menon et al. ICLR 2021)."""

    classifier_kind = ""

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        self.register_buffer("log_prior", log_prior(self.class_counts))

    def loss_fn(self, logits, y, feats):
        return logit_adjusted_ce(logits, y, self.log_prior, tau=float(self.cfg.method.la.tau))


@METHODS.register("bsce")
class BalancedSoftmax(LogitAdjusted):
    """Balanced softmax cross-entropy (Ren et al. NeurIPS 2020)."""

    def loss_fn(self, logits, y, feats):
        return balanced_softmax_ce(logits, y, self.log_prior)


@METHODS.register("ldam_drw")
class LDAMDRW(SingleBranch):
    """LDAM margin loss on a cosine classifier with deferred re-weighting (Cao et al. 2019)."""

    classifier_kind = "normed"

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        c = cfg.method.ldam
        self.ldam = LDAMLoss(self.class_counts, max_margin=float(c.max_margin), scale=float(c.scale))
        self.register_buffer("drw", drw_weights(self.class_counts, beta=float(c.drw_beta)))
        # whether deferred re-weighting is on; a buffer, so a checkpoint records it
        self.register_buffer("drw_on", torch.zeros((), dtype=torch.bool))

    def drw_start_epoch(self, epochs: int) -> int:
        """The first epoch (0-based) with re-weighting: ``method.ldam.drw_start`` x epochs when
        given, else the first learning-rate decay (LDAM-DRW's recipe: epoch 160 of 200, its
        first milestone), else, without a step schedule, 80% of the epochs."""
        start = self.cfg.method.ldam.drw_start
        if start is not None:
            return int(round(float(start) * epochs))
        t = self.cfg.train
        if t.schedule == "step" and len(t.milestones):
            return int(min(t.milestones))
        return int(round(0.8 * epochs))

    def on_epoch_start(self, epoch, epochs):
        self.drw_on.fill_(epoch >= self.drw_start_epoch(epochs))

    def loss_fn(self, logits, y, feats):
        # all-ones weights before the switch (equal to unweighted CE), without a host sync
        weight = torch.where(self.drw_on, self.drw, torch.ones_like(self.drw))
        return self.ldam(logits, y, weight=weight)


@METHODS.register("etf")
class FixedETF(SingleBranch):
    """Fixed simplex-ETF classifier (Yang et al. NeurIPS 2022) with dot regression or CE."""

    classifier_kind = "etf"

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        self.feature_bn = nn.BatchNorm1d(self.backbone.out_dim) if cfg.method.etf.feature_bn else nn.Identity()

    def head_input(self, h):
        h = self.feature_bn(h)
        return F.normalize(h, dim=1) if self.cfg.method.etf.normalize_features else h

    def loss_fn(self, logits, y, feats):
        if self.cfg.method.etf.loss == "dr":
            return dot_regression_loss(feats, y, self.classifier.weight)
        return F.cross_entropy(logits, y)


class ProjectionMLP(nn.Sequential):
    def __init__(self, d_in: int, hidden: int, d_out: int):
        super().__init__(nn.Linear(d_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, d_out))


@METHODS.register("bcl")
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


@METHODS.register("crt")
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

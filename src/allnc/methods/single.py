"""Single-branch methods' common part: a backbone, a classifier, an optional mixup, and
the optional HyCon / P2P terms on the features the classifier reads (``nc_terms``)."""
from __future__ import annotations

import torch

from ..errors import ConfigError
from ..models import build_backbone, build_classifier
from . import nc_terms
from .base import DataInfo, LoaderSpec, Method, StepState, mixup


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
        self.use_hycon, self.use_p2p = nc_terms.switches(cfg)
        if (self.use_hycon or self.use_p2p) and float(cfg.train.mixup) > 0:
            raise ConfigError("train.mixup mixes labels, which HyCon and P2P need whole; turn one of them off")
        if self.use_hycon or self.use_p2p:
            self.mem = nc_terms.make_memory(cfg, self.num_classes, self.backbone.out_dim)
        if self.use_hycon:
            self.hycon = nc_terms.make_hycon(cfg)
        if self.use_p2p:
            self.p2p = nc_terms.make_p2p(cfg)

    def refuse_label_mixing(self, nc_terms_why: str, mixup_why: str) -> None:
        """For a method built without HyCon/P2P and without train.mixup: a ConfigError naming
        the setting to turn off, with the method's reason."""
        if self.use_hycon or self.use_p2p:
            raise ConfigError(f"{nc_terms_why}; set method.hycon.enabled=false and method.p2p.enabled=false")
        if float(self.cfg.train.mixup) > 0:
            raise ConfigError(f"{mixup_why}; set train.mixup=0")

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
            l_h = nc_terms.hycon_term(self.hycon, self.cfg, self.mem, h, y, means, present)
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

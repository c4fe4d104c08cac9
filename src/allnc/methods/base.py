"""The method interface: one strategy object per method.

A method is an ``nn.Module`` that owns the model, the loss modules and any state the
method keeps (class-mean memories, fixed ETF buffers), so that its ``state_dict`` is a
complete checkpoint. The engine asks it which loaders a training step needs, hands it
one batch from each, and gets back a scalar loss.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ..registry import Registry

#: name -> Method class; ``@METHODS.register(name, section=..., config=Dataclass)`` also
#: carries the config dataclass the method reads (its ``method.<section>`` keys)
METHODS: Registry[type["Method"]] = Registry("method")
#: config sections shared by several methods (HyCon, P2P, the class-mean memory)
SECTIONS: Registry[type] = Registry("method config section")


@dataclass(frozen=True)
class LoaderSpec:
    """One loader of a training step: its sampler, how many augmented views per image, and
    optionally an augmentation preset per view (None: data.augment for every view).
    ``power`` is the exponent of the ``power`` sampler (class k drawn in proportion to
    ``n_k ** power``); the named samplers ignore it."""

    sampler: str = "instance"
    views: int = 1
    view_augments: tuple[str, ...] | None = None
    power: float = 1.0


@dataclass
class DataInfo:
    """What a method may know about the training data."""

    class_counts: np.ndarray
    in_channels: int
    image_hw: tuple[int, int] = (32, 32)

    @property
    def num_classes(self) -> int:
        return int(len(self.class_counts))


@dataclass
class StepState:
    epoch: int  # 0-based epoch index
    epochs: int
    step: int = 0  # step within the epoch
    steps_per_epoch: int = 1

    @property
    def progress(self) -> float:
        """Fraction of training done at this step, in [0, 1)."""
        return (self.epoch + self.step / max(self.steps_per_epoch, 1)) / self.epochs


def plain_config(cfg: Any) -> Any:
    """``cfg`` as plain Python, read-only by convention: nested ``SimpleNamespace``s, tuples
    for lists. A method keeps its config this way because a compiled training step reads
    plain attributes without leaving its graph, while under torch 2.14 OmegaConf's attribute
    access makes ``torch.compile`` break it (every method of the device plan broke its step's
    graph there, AllNC seven times: on a GPU each piece is its own CUDA graph, with Python
    between them; torch 2.11 traced it whole)."""
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    if isinstance(cfg, dict):
        return SimpleNamespace(**{str(k): plain_config(v) for k, v in cfg.items()})
    if isinstance(cfg, (list, tuple)):
        return tuple(plain_config(v) for v in cfg)
    return cfg


class Method(nn.Module):
    """Base class. Subclasses set ``self.loaders`` and implement the abstract parts.

    ``self.cfg`` is the run's config as plain Python (``plain_config``); the ``cfg`` that
    ``__init__`` receives is the OmegaConf tree, for the builders that take one."""

    loaders: tuple[LoaderSpec, ...] = (LoaderSpec(),)

    def __init__(self, cfg: DictConfig, info: DataInfo):
        super().__init__()
        self.cfg = plain_config(cfg)
        self.info = info
        self.num_classes = info.num_classes
        self.register_buffer(
            "class_counts", torch.as_tensor(np.asarray(info.class_counts), dtype=torch.float32), persistent=False
        )

    # -- training -------------------------------------------------------------------
    def training_loss(self, batches: list[dict], state: StepState) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        """Hook for epoch-level schedules (deferred re-weighting, adaptors)."""

    def after_step(self, state: StepState) -> None:
        """Hook after each optimizer step, run eagerly outside any compiled code: a constraint
        kept by projection (weight balancing's max-norm). No-op by default."""

    def parameter_groups(self, weight_decay: float) -> list[dict]:
        """The optimizer's parameter groups; a group's optional ``lr_mult`` scales the
        learning rate the schedule gives it (MiSLAS's classifier learns at a fraction of it)."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params, "weight_decay": weight_decay}]

    # -- inference ------------------------------------------------------------------
    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inference features (what the classifier reads) and logits."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)[1]

    def classifier_weight(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(W, b) of the classifier that makes the predictions, W of shape K x d."""
        raise NotImplementedError

    def loss_logit_scale(self) -> float:
        """The factor the training loss multiplies the classifier's outputs by before its
        softmax (LDAM's s on the cosines); 1 where the loss reads the outputs as they are.
        Post-hoc logit adjustment works in the units the loss trained."""
        return 1.0

    @torch.no_grad()
    def calibrate(self, val_batches) -> dict | None:
        """After training, with a validation split: settle any inference-time choice on it
        (``val_batches()`` yields (x, y) on the device). Returns what was chosen, or None."""
        return None

    # -- initialisation from another run (cRT) ---------------------------------------
    def load_backbone_from(self, state_dict: dict) -> None:
        raise NotImplementedError(f"method '{type(self).__name__}' cannot start from another run")


def build_method(cfg: DictConfig, info: DataInfo) -> Method:
    """The method named by ``cfg.method.name`` (every method module registers itself when
    the package ``allnc.methods`` is imported)."""
    return METHODS.get(cfg.method.name)(cfg, info)


def torch_seeded_rng() -> np.random.Generator:
    """A NumPy generator seeded from torch's global generator, for a method's per-step draws:
    a seeded run makes the same draws, compiled or not (callers run outside the graph)."""
    return np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,)).item()))


@torch.compiler.disable
def mixup_draw(n: int, alpha: float, device: torch.device) -> tuple[float, torch.Tensor]:
    """Mixup's random draws: lambda ~ Beta(alpha, alpha) and a permutation of the batch.

    Kept out of a compiled step: torch 2.11's inductor fails on ``x[torch.randperm(n)]``
    inside a graph (its randperm-index pattern expects a slice), so the permutation enters
    the graph as an input. The draws, and so the run, are the same compiled or not."""
    lam = float(torch_seeded_rng().beta(alpha, alpha))
    return lam, torch.randperm(n, device=device)


def mixup(x: torch.Tensor, y: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Mixup (Zhang et al. 2018): returns mixed x, the two label vectors and lambda."""
    lam, perm = mixup_draw(x.shape[0], alpha, x.device)
    return lam * x + (1 - lam) * x[perm], y, y[perm], lam

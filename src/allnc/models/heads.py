"""Classifier heads. Each exposes ``weight`` (K x d) and ``bias`` (a tensor or None).

- ``linear``: ``nn.Linear`` (optional bias); Kaiming-normal weight as LDAM's ResNet-32.
- ``normed``: the cosine classifier of LDAM: ``normalize(h) . normalize(w_k)``, no bias,
  outputs in [-1, 1]; the scale s is the loss's business.
- ``etf``: a fixed simplex equiangular tight frame (Papyan et al. 2020; Yang et al. 2022):
  a non-trainable buffer ``weight`` with unit rows and pairwise cosines -1/(K-1); no bias.

``ProjectionMLP`` is the Linear-BN-ReLU-Linear head of the contrastive methods (BCL, PaCo).
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..registry import Registry

CLASSIFIERS: Registry[Callable[..., nn.Module]] = Registry("classifier")


class NormedLinear(nn.Module):
    """Cosine classifier: ``logits[i, k] = scale * cos(h_i, w_k)``; no bias. ``scale`` 1 is
    LDAM's (its loss applies s); BCL's released classifier builds 30 in."""

    def __init__(self, in_dim: int, num_classes: int, scale: float = 1.0):
        super().__init__()
        self.in_dim = in_dim
        self.num_classes = num_classes
        self.scale = float(scale)
        self.weight = nn.Parameter(torch.empty(num_classes, in_dim))
        self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # LDAM: uniform(-1, 1), then every class vector renormalised to unit length.
        with torch.no_grad():
            self.weight.uniform_(-1, 1)
            self.weight.copy_(F.normalize(self.weight, dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cos = F.normalize(x, dim=1) @ F.normalize(self.weight, dim=1).t()
        return cos * self.scale if self.scale != 1.0 else cos

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, num_classes={self.num_classes}, scale={self.scale}"


class ProjectionMLP(nn.Sequential):
    """Linear (d_in -> hidden), BatchNorm, ReLU, Linear (hidden -> d_out)."""

    def __init__(self, d_in: int, hidden: int, d_out: int):
        super().__init__(nn.Linear(d_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, d_out))


def simplex_etf(num_classes: int, dim: int, seed: int = 0, width: Optional[int] = None) -> torch.Tensor:
    """A random simplex ETF, (K, d) float32: unit rows, pairwise cosines exactly -1/(K-1).

    d >= K: ``M = sqrt(K/(K-1)) U (I - 11^T/K)`` with U (d x K) orthonormal, from the QR
    of a Gaussian drawn from a generator seeded with ``seed``; the rows are ``M^T``.
    d = K-1: the K vertices live in the (K-1)-dim subspace orthogonal to 1. With V
    (K x (K-1)) an orthonormal basis of that subspace, ``V V^T = I - 11^T/K``, so the rows
    of ``sqrt(K/(K-1)) V`` are an ETF in R^{K-1}; a seeded random rotation Q ((K-1) x
    (K-1)) is applied. d < K-1: no simplex ETF exists, a ``ConfigError``.
    Computed in float64 and rounded to float32.
    """
    K, d = int(num_classes), int(dim)
    if K < 2:
        raise ConfigError(f"a simplex ETF classifier needs at least 2 classes, got {K}")
    if d < K - 1:
        if width is not None:
            need = math.ceil(width * (K - 1) / d)
            fix = f"set model.width to at least {need} (features grow linearly with it)"
        else:
            fix = "raise model.width (resnet32/resnet_small features are 4 x width)"
        raise ConfigError(
            f"model.classifier=etf: a simplex ETF for {K} classes needs a feature dimension of "
            f"at least K-1 = {K - 1}, but the classifier input has {d}; {fix}, "
            "or use model.classifier=linear"
        )
    g = torch.Generator().manual_seed(int(seed))
    center = torch.eye(K, dtype=torch.float64) - torch.full((K, K), 1.0 / K, dtype=torch.float64)
    if d >= K:
        gauss = torch.randn(d, K, generator=g, dtype=torch.float64)
        U, _ = torch.linalg.qr(gauss)  # d x K, orthonormal columns
        M = math.sqrt(K / (K - 1)) * (U @ center)  # d x K, columns are the class vectors
        W = M.t()
    else:  # d == K - 1
        evals, evecs = torch.linalg.eigh(center)  # ascending: one 0, then K-1 ones
        V = evecs[:, 1:]  # K x (K-1)
        gauss = torch.randn(d, d, generator=g, dtype=torch.float64)
        Q, _ = torch.linalg.qr(gauss)
        W = math.sqrt(K / (K - 1)) * (V @ Q.t())
    W = W / W.norm(dim=1, keepdim=True)  # exact unit rows up to rounding
    return W.to(torch.float32).contiguous()


class ETFClassifier(nn.Module):
    """Fixed simplex-ETF classifier: ``logits = h W^T`` with ``W`` a buffer; no bias."""

    def __init__(self, in_dim: int, num_classes: int, seed: int = 0, width: Optional[int] = None):
        super().__init__()
        self.in_dim = in_dim
        self.num_classes = num_classes
        self.seed = seed
        self.register_buffer("weight", simplex_etf(num_classes, in_dim, seed, width))
        self.bias: Optional[torch.Tensor] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.t()

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, num_classes={self.num_classes}, seed={self.seed} (fixed)"


@CLASSIFIERS.register("linear")
def _linear(in_dim: int, num_classes: int, bias: bool = True, etf_seed: int = 0, width=None) -> nn.Module:
    m = nn.Linear(in_dim, num_classes, bias=bias)
    nn.init.kaiming_normal_(m.weight)  # LDAM's _weights_init; bias keeps nn.Linear's default
    return m


@CLASSIFIERS.register("normed")
def _normed(in_dim: int, num_classes: int, bias: bool = True, etf_seed: int = 0, width=None) -> nn.Module:
    return NormedLinear(in_dim, num_classes)  # never a bias


@CLASSIFIERS.register("etf")
def _etf(in_dim: int, num_classes: int, bias: bool = True, etf_seed: int = 0, width=None) -> nn.Module:
    return ETFClassifier(in_dim, num_classes, seed=etf_seed, width=width)  # never a bias


def build_classifier(
    kind: str,
    in_dim: int,
    num_classes: int,
    bias: bool = True,
    etf_seed: int = 0,
    width: Optional[int] = None,
) -> nn.Module:
    """A classifier head by name. ``bias`` only affects ``linear`` (``normed`` and ``etf``
    have none). ``width`` (the model.width that gave ``in_dim``) only sharpens the error
    message when an ETF does not fit."""
    return CLASSIFIERS.get(kind)(int(in_dim), int(num_classes), bool(bias), int(etf_seed), width)

"""Label-aware smoothing (MiSLAS; Zhong et al. CVPR 2021).

Each class k gets its own smoothing factor eps_k, largest for the most frequent class and
smallest for the rarest, placed between them by a shape function f of the normalised count
t_k = (n_k - n_min) / (n_max - n_min) in [0, 1]:

    eps_k = eps_tail + (eps_head - eps_tail) * f(t_k)

with f(t) = sin(pi t / 2) (concave, the paper's choice), t (linear) or 1 - cos(pi t / 2)
(convex). The loss of an image of class y is label smoothing with that class's factor,

    L = (1 - eps_y) * (-log p_y) + eps_y * mean_k (-log p_k),

so eps_y = 0 is cross-entropy. Equal counts (n_max = n_min) give every class eps_head.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .ce import Counts, _counts

SHAPES = ("concave", "linear", "convex")


def smoothing_factors(class_counts: Counts, head: float, tail: float, shape: str = "concave") -> torch.Tensor:
    """The per-class smoothing factors eps_k (float32, length K) of the module docstring."""
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
    n = _counts(class_counts)
    span = float(n.max() - n.min())
    if span == 0:
        return torch.full((n.numel(),), float(head), dtype=torch.float32)
    t = (n - n.min()) / span
    f = {"concave": lambda: torch.sin(t * (math.pi / 2)),
         "linear": lambda: t,
         "convex": lambda: 1 - torch.cos(t * (math.pi / 2))}[shape]()
    return (tail + (head - tail) * f).float()


class LabelAwareSmoothing(nn.Module):
    """The label-aware smoothing loss (mean over the batch); eps is a buffer."""

    def __init__(self, class_counts: Counts, head: float, tail: float, shape: str = "concave"):
        super().__init__()
        self.register_buffer("eps", smoothing_factors(class_counts, head, tail, shape))

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits.float(), dim=-1)
        eps = self.eps[y]
        nll = -logp.gather(1, y[:, None]).squeeze(1)
        uniform = -logp.mean(dim=-1)
        return ((1 - eps) * nll + eps * uniform).mean()

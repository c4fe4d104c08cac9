"""Weight balancing's second stage (Alshammari et al. CVPR 2022, "Long-Tailed Recognition via
Weight Balancing"): a max-norm constraint on the classifier's rows, kept by projection after
gradient steps, and the class-balanced loss its released code trains the classifier with.

* ``maxnorm_threshold(weight, thresh)``: the radius T = min_k ||w_k|| + thresh (max_k ||w_k||
  - min_k ||w_k||), fixed once from the first stage's classifier;
* ``maxnorm_project_(weight, radius)``: every row longer than T scaled back to length T (its
  direction kept), shorter rows untouched; in place, on the parameter's data;
* ``cb_softmax_bce(logits, y, weights)``: the released code's "softmax" class-balanced loss,
  a binary cross-entropy between the softmax and the one-hot label, each image weighted by
  its class's effective-number weight (``drw_weights``), averaged over images and classes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def row_norms(weight: torch.Tensor) -> torch.Tensor:
    """The L2 norm of each class's row of a classifier weight (K x d)."""
    return torch.linalg.vector_norm(weight.detach().reshape(weight.shape[0], -1).float(), dim=1)


def maxnorm_threshold(weight: torch.Tensor, thresh: float) -> torch.Tensor:
    """T = min + thresh (max - min) of the row norms: thresh 0 is the shortest row, 1 the longest."""
    if not 0.0 <= thresh <= 1.0:
        raise ValueError(f"thresh must lie in [0, 1], got {thresh}")
    n = row_norms(weight)
    return n.min() + thresh * (n.max() - n.min())


@torch.no_grad()
def maxnorm_project_(weight: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Scale each row of ``weight`` whose norm exceeds ``radius`` to norm ``radius``, in place
    (projected gradient descent onto the ball of that radius, row by row); returns ``weight``."""
    n = row_norms(weight)
    scale = torch.where(n > radius, radius / n.clamp_min(torch.finfo(n.dtype).tiny), torch.ones_like(n))
    weight.mul_(scale.to(weight.dtype).reshape(-1, *([1] * (weight.dim() - 1))))
    return weight


def cb_softmax_bce(logits: torch.Tensor, y: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """mean over images i and classes k of w_{y_i} * BCE(softmax(z_i)_k, [k = y_i])."""
    p = torch.softmax(logits.float(), dim=1)
    onehot = F.one_hot(y, logits.shape[1]).float()
    w = weights.to(p.device)[y].unsqueeze(1).expand_as(p)
    return F.binary_cross_entropy(p, onehot, weight=w)

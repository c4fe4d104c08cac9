"""Dot-regression loss for a fixed simplex-ETF classifier (Yang et al., NeurIPS 2022,
"Inducing neural collapse in imbalanced learning: do we really need a learnable classifier
at the end of deep neural network?").
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def batch_class_weights(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-image weights that give every class present in the batch the same share:
    ``B / (C_b n_c)`` for an image of class c, with n_c images of class c in the batch of B
    and C_b classes present, so each present class's weights sum to B / C_b and all of them
    to B. (Yang et al.'s released code scales each class's ETF target by the square root of
    this, its default ``GivenEw``, which multiplies that class's squared error by it.)"""
    # a scatter, not bincount: the counts' shape stays K whatever the labels, for compiled graphs
    counts = torch.zeros(num_classes, device=y.device).scatter_add_(0, y, torch.ones(y.shape, device=y.device))
    present = (counts > 0).sum()
    return y.numel() / (present * counts[y])


def dot_regression_loss(
    features: torch.Tensor, y: torch.Tensor, etf_weight: torch.Tensor, normalize: bool = True,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dot regression with ``E_W = E_H = 1``:

        ``L = (1/B) sum_i 1/2 v_i (w_{y_i} . h_i - 1)^2``,  ``h_i = features_i / ||features_i||``

    with per-image weights ``v`` (``weight``; all 1 without it, ``batch_class_weights`` for
    the authors' default).

    ``etf_weight`` (K x d) holds the fixed ETF rows (unit norm, so ``E_W = 1``). The loss is
    zero exactly when ``h_i = w_{y_i}`` and only the target row appears (no push from the
    other classes: the fixed ETF already separates them). The gradient reaches the features
    only; the ETF is detached. ``normalize=False`` (``method.etf.normalize_features``) uses
    the raw features.
    """
    h = features.float()
    if normalize:
        h = F.normalize(h, dim=1)
    w = etf_weight.detach().to(h.device, torch.float32)[y]
    dot = (w * h).sum(dim=1)
    err = 0.5 * (dot - 1.0).pow(2)
    return (err if weight is None else err * weight.to(err)).mean()

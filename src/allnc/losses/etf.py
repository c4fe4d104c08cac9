"""Dot-regression loss for a fixed simplex-ETF classifier (Yang et al., NeurIPS 2022,
"Inducing neural collapse in imbalanced learning: do we really need a learnable classifier
at the end of deep neural network?").
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def dot_regression_loss(
    features: torch.Tensor, y: torch.Tensor, etf_weight: torch.Tensor, normalize: bool = True
) -> torch.Tensor:
    """Dot regression with ``E_W = E_H = 1``:

        ``L = (1/B) sum_i 1/2 (w_{y_i} . h_i - 1)^2``,  ``h_i = features_i / ||features_i||``

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
    return 0.5 * (dot - 1.0).pow(2).mean()

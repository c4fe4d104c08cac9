"""LDAM loss and deferred re-weighting (Cao et al., NeurIPS 2019; LDAM-DRW).

* Margins ``m_k = C / n_k^(1/4)`` with C chosen so that ``max_k m_k = max_margin``.
* ``LDAMLoss``: on the cosine logits s_{ik} of a normed classifier,
  ``L = CE( scale * (s_i - m_{y_i} e_{y_i}), y_i; weight )`` -- the margin of the true
  class is subtracted from its cosine only, then everything is scaled.
* ``drw_weights``: effective-number weights (Cui et al., CVPR 2019)
  ``w_k = (1 - beta) / (1 - beta^{n_k})``, normalised so ``sum_k w_k = K``; LDAM-DRW switches
  them on late in training (``method.ldam.drw_start``).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .ce import Counts, _counts


def ldam_margins(class_counts: Counts, max_margin: float = 0.5) -> torch.Tensor:
    """``m_k = max_margin * (n_min / n_k)^(1/4)``, i.e. ``C / n_k^(1/4)`` with ``max m = max_margin``."""
    n = _counts(class_counts)
    m = n.pow(-0.25)
    return (m * (max_margin / m.max())).float()


def drw_weights(class_counts: Counts, beta: float = 0.9999) -> torch.Tensor:
    """Effective-number class weights ``(1 - beta) / (1 - beta^{n_k})`` normalised to sum to K."""
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must lie in [0, 1), got {beta}")
    n = _counts(class_counts)
    w = (1.0 - beta) / (1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), n))
    return (w * (n.numel() / w.sum())).float()


class LDAMLoss(nn.Module):
    """Label-distribution-aware margin loss.

    ``forward(cosines, y, weight=None)``: ``cosines`` (B x K) are the outputs of a normed
    (cosine) classifier. ``L = CE(scale * (cosines - m_y onehot(y)), y)`` with the margins
    ``m`` in a registered buffer ``margins`` (proportional to ``n_k^(-1/4)``, the largest
    equal to ``max_margin``). ``weight`` (K), when given, overrides the module's own
    ``weight`` buffer (set one, e.g. DRW weights, with ``set_weight``).
    With ``max_margin = 0`` the loss is plain cross-entropy of ``scale * cosines``.
    """

    margins: torch.Tensor

    def __init__(
        self,
        class_counts: Counts,
        max_margin: float = 0.5,
        scale: float = 30.0,
        weight: Optional[torch.Tensor] = None,
    ):
        super().__init__()
        self.max_margin = float(max_margin)
        self.scale = float(scale)
        self.register_buffer("margins", ldam_margins(class_counts, max_margin))
        # not persistent: DRW weights follow the epoch and are recomputed by the method
        self.register_buffer(
            "weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32), persistent=False
        )

    def set_weight(self, weight: Optional[torch.Tensor]) -> None:
        """Set (or clear, with None) the per-class weight used when ``forward`` gets none."""
        if weight is None:
            self.weight = None
        else:
            self.weight = torch.as_tensor(weight, dtype=torch.float32, device=self.margins.device)

    def forward(self, cosines: torch.Tensor, y: torch.Tensor, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        s = cosines.float()
        m = self.margins.to(s.device)[y]
        s = s - F.one_hot(y, s.shape[1]).to(s.dtype) * m[:, None]
        w = weight if weight is not None else self.weight
        if w is not None:
            w = w.to(s.device, torch.float32)
        return F.cross_entropy(self.scale * s, y, weight=w)

    def extra_repr(self) -> str:
        return f"num_classes={self.margins.numel()}, max_margin={self.max_margin}, scale={self.scale}"

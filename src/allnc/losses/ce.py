"""Cross-entropy variants for long-tailed classification.

* ``log_prior(class_counts)``: log pi_k = log(n_k / sum_j n_j).
* ``logit_adjusted_ce``: logit-adjusted loss (Menon et al., ICLR 2021),
  ``CE(z + tau * log pi, y)``.
* ``balanced_softmax_ce``: Balanced Softmax (Ren et al., NeurIPS 2020),
  ``-log( n_y exp(z_y) / sum_k n_k exp(z_k) ) = CE(z + log pi, y)``.
* ``class_weight``/``class_weighted_ce``: cross-entropy with per-class weights
  proportional to ``n_k ** -power``, normalised to sum to K.

Every loss computes in float32 whatever the dtype of the logits (bf16 autocast).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

Counts = Union[torch.Tensor, Sequence[int], Sequence[float]]


def _counts(class_counts: Counts) -> torch.Tensor:
    n = torch.as_tensor(class_counts, dtype=torch.float64)
    if n.dim() != 1 or n.numel() == 0:
        raise ValueError("class_counts must be a non-empty 1-D sequence")
    if bool((n <= 0).any()):
        raise ValueError("every class count must be positive")
    return n


def log_prior(class_counts: Counts) -> torch.Tensor:
    """Log class prior ``log pi_k = log(n_k / sum_j n_j)`` as a float32 tensor of length K."""
    n = _counts(class_counts)
    return (n / n.sum()).log().float()


def logit_adjusted_ce(
    logits: torch.Tensor,
    y: torch.Tensor,
    log_prior: torch.Tensor,
    tau: float = 1.0,
    weight: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Logit-adjusted cross-entropy (Menon et al. 2021).

    ``L = mean_i -log softmax(z_i + tau * log pi)[y_i]``; ``tau = 0`` is plain cross-entropy,
    and a uniform prior shifts every logit by the same constant, which leaves the loss equal
    to plain cross-entropy. ``weight`` (K) is an optional per-class weight
    (``F.cross_entropy`` semantics: weighted mean).
    """
    adj = logits.float() + tau * log_prior.to(logits.device, torch.float32)
    w = None if weight is None else weight.to(logits.device, torch.float32)
    return F.cross_entropy(adj, y, weight=w)


def balanced_softmax_ce(logits: torch.Tensor, y: torch.Tensor, log_prior: torch.Tensor) -> torch.Tensor:
    """Balanced Softmax cross-entropy (Ren et al. 2020).

    ``L = mean_i -log( n_{y_i} exp(z_{i,y_i}) / sum_k n_k exp(z_{i,k}) )``, i.e. the softmax of
    ``z + log pi``. Its gradient on logit j is ``pi_j e^{z_j} / sum_k pi_k e^{z_k} - [j = y]``
    (divided by the batch size).
    """
    adj = logits.float() + log_prior.to(logits.device, torch.float32)
    return F.cross_entropy(adj, y)


def class_weight(class_counts: Counts, power: float = 1.0) -> torch.Tensor:
    """Per-class weights ``w_k proportional to n_k ** -power``, normalised so ``sum_k w_k = K``."""
    n = _counts(class_counts)
    w = n.pow(-power)
    return (w * (n.numel() / w.sum())).float()


def class_weighted_ce(
    logits: torch.Tensor, y: torch.Tensor, class_counts: Counts, power: float = 1.0
) -> torch.Tensor:
    """Cross-entropy weighted per class by ``class_weight(class_counts, power)``
    (``power = 1``: inverse frequency; ``power = 0``: plain cross-entropy)."""
    w = class_weight(class_counts, power).to(logits.device)
    return F.cross_entropy(logits.float(), y, weight=w)


# ------------------------------------------------------------------ shared helpers
def fp32_up(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32, or float64 where it already is float64 (tests use float64)."""
    return x if x.dtype == torch.float64 else x.float()


def no_autocast(t: torch.Tensor):
    """A context that switches autocast off on ``t``'s device, so the matmuls of a loss
    run in float32 (bf16 cosines divided by tau = 0.1 lose about 0.04 per logit)."""
    return torch.autocast(device_type=t.device.type, enabled=False)

"""P2P, the peer-to-peer loss of AllNC (NC2 and NC3) -- this project's reconstruction
(the paper's exact equation is not available; every choice is an option).

Class means and classifier vectors are peers. With the class-balanced centre
``mu_G = mean_k mu_k`` (over the valid classes), ``mu~_k = normalize(mu_k - mu_G)`` and
``S_kj = cos(mu~_k, w_j)``:

contrast (default, symmetric peer contrast):
    L = (1/2K) sum_k [ -log softmax_j(S_kj/tau)[k] - log softmax_j(S_jk/tau)[k] ]
  (the first term: mean k against every classifier row; the second: classifier row k
  against every class mean). Its minimum puts mu~_k on w_k (self-duality) and spreads the
  pairs as far apart as the sphere allows: the simplex ETF where d >= K-1.

regression:
    L = mean_{k,j} (S_kj - T_kj)^2,  T = simplex-ETF cosines (1 on the diagonal, -1/(K-1) off)
  exactly 0 at a simplex ETF with mu~_k = w_k/||w_k||.

Where d < K-1 (CIFAR-100 with a 64-d ResNet-32) no simplex ETF exists: the regression target
is then unreachable, while the contrast form still finds the best spread the sphere allows.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .ce import fp32_up, no_autocast
from .memory import centred_normalized

FORMS = ("contrast", "regression")


def etf_cosines(num_classes: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """The simplex-ETF cosine matrix: 1 on the diagonal, -1/(K-1) off it."""
    K = int(num_classes)
    if K < 2:
        raise ValueError("a simplex ETF needs at least 2 classes")
    T = torch.full((K, K), -1.0 / (K - 1), dtype=dtype, device=device)
    T.fill_diagonal_(1.0)
    return T


class P2PLoss(nn.Module):
    """Peer-to-peer loss between class means and classifier vectors (module docstring).

    ``forward(means (K x D), W (K x D), valid=None)``: ``means`` are raw class means (batch
    means with gradient where present, memory elsewhere); they are centred with the
    class-balanced centre and normalised here (``centre=False`` only normalises, for means
    already centred). ``W`` rows are normalised here; the gradient reaches both.

    ``valid`` (K bool, optional) marks the classes whose mean exists (present in the batch or
    seen by the memory). Only valid means enter the centre and the sums over k; in the
    contrast form a mean still competes against every classifier row (all K rows exist),
    while a classifier row competes only against valid means. Options: ``tau``
    (method.p2p.tau), ``form`` (method.p2p.form).
    """

    def __init__(self, tau: float = 0.1, form: str = "contrast", centre: bool = True, equinorm: float = 0.0):
        super().__init__()
        if form not in FORMS:
            raise ValueError(f"P2P form {form!r} is not one of {FORMS}")
        if equinorm < 0:
            raise ValueError(f"equinorm weight must be >= 0, got {equinorm}")
        self.tau = float(tau)
        self.form = form
        self.centre = bool(centre)
        self.equinorm = float(equinorm)

    def similarities(self, means: torch.Tensor, W: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``S_kj = cos(mu~_k, w_j)`` (K x K)."""
        with no_autocast(means):
            mu = fp32_up(means)
            w = F.normalize(W.to(mu.dtype), dim=1)
            mt = centred_normalized(mu, valid) if self.centre else F.normalize(mu, dim=1)
            return mt @ w.T

    def forward(self, means: torch.Tensor, W: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        K = means.shape[0]
        if W.shape[0] != K:
            raise ValueError(f"{K} class means but {W.shape[0]} classifier rows")
        v = (
            torch.ones(K, dtype=torch.bool, device=means.device)
            if valid is None
            else valid.to(device=means.device, dtype=torch.bool)
        )
        S = self.similarities(means, W, v)
        # no data-dependent branch (a compiled step stays one graph): with no valid class every
        # per-class term is masked to 0 and the count is clamped to 1. A batch always holds a
        # class, so in training at least one mean is valid.
        if self.form == "regression":
            T = etf_cosines(K, S.dtype, S.device)
            per_k = (S - T).pow(2).mean(dim=1)
        else:
            idx = torch.arange(K, device=S.device)
            # mean k against all classifier rows j
            row = -F.log_softmax(S / self.tau, dim=1)[idx, idx]
            # classifier row k against the valid means j: entries S_jk
            col_logits = (S.T / self.tau).masked_fill(~v[None, :], float("-inf"))
            col = -F.log_softmax(col_logits, dim=1)[idx, idx]
            per_k = 0.5 * (row + torch.where(v, col, torch.zeros_like(col)))
        per_k = torch.where(v, per_k, torch.zeros_like(per_k))
        loss = per_k.sum() / v.sum().clamp_min(1).to(per_k.dtype)
        if self.equinorm > 0:
            loss = loss + self.equinorm * self.equinorm_penalty(means, W, v)
        return loss

    def equinorm_penalty(self, means: torch.Tensor, W: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Squared coefficient of variation of the classifier-row norms plus that of the
        centred class-mean norms, over the valid classes: 0 exactly when each set is equinorm
        (NC2's equinorm, which the cosines above cannot see). Its gradient shrinks long rows
        and stretches short ones, the head bias that logit adjustment removes at the output."""
        K = means.shape[0]
        v = torch.ones(K, dtype=torch.bool, device=means.device) if valid is None else valid.to(means.device, torch.bool)
        with no_autocast(means):
            mu = fp32_up(means)
            vf = v.to(mu.dtype)
            n = vf.sum().clamp_min(1)
            centre = (vf[:, None] * mu).sum(0, keepdim=True) / n if self.centre else torch.zeros_like(mu[:1])

            def cv2(norms):
                m = (vf * norms).sum() / n
                var = (vf * (norms - m) ** 2).sum() / n
                return var / m.clamp_min(1e-12) ** 2

            return cv2((mu - centre).norm(dim=1)) + cv2(W.to(mu.dtype).norm(dim=1))

    def extra_repr(self) -> str:
        return f"tau={self.tau}, form={self.form!r}, centre={self.centre}, equinorm={self.equinorm}"

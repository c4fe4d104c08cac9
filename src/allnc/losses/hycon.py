"""HyCon, the hybrid contrastive loss of AllNC (NC1) -- this project's reconstruction
(see docs: the paper's exact equation is not available; every choice is an option).

One augmented view per image; the class mean acts as the second view of every anchor.
With ``z_i = h_i/||h_i||`` and ``c_k = mu_k/||mu_k||`` (detached class-mean memory):

    candidates C(i) = { z_j : j != i }  (only if sample_pairs)  U  { c_k : k valid }
    positives  P(i) = { z_j : j != i, y_j = y_i }  (only if sample_pairs)  U  { c_{y_i} }
    A_k(i)          = the candidates of class k

    L_HyCon = (1/|B|) sum_i -(1/|P(i)|) sum_{p in P(i)}
              log( exp(z_i.p/tau) / sum_k (1/|A_k(i)|) sum_{a in A_k(i)} exp(z_i.a/tau) )

``class_average=False`` replaces the denominator with the plain sum over C(i).
``sample_pairs=False`` leaves the pure anchor-to-mean contrast, which is cross-entropy of the
logits ``z_i.c_k/tau`` over the valid classes.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .bcl import class_averaged_contrast, class_shares, reduce_anchors
from .ce import fp32_up, no_autocast


class HyConLoss(nn.Module):
    """Hybrid contrastive loss (formula in the module docstring).

    ``forward(features (B x d), y (B), class_means (K x d), valid=None, reduction="mean")``.
    Features are normalised here; class means are detached and normalised here. ``valid``
    (K bool) marks the classes whose mean may serve as candidate (pass the memory's ``seen``);
    a class mean of (near) zero norm is never used (it has no direction). Anchors left without
    any positive (a class alone in the batch whose mean is not valid yet) are left out of the
    mean, so the average runs over |B| anchors once every mean is valid.
    Options: ``tau`` (method.hycon.tau), ``sample_pairs`` (method.hycon.sample_pairs),
    ``class_average`` (method.hycon.class_average).
    """

    def __init__(self, tau: float = 0.1, sample_pairs: bool = True, class_average: bool = True):
        super().__init__()
        self.tau = float(tau)
        self.sample_pairs = bool(sample_pairs)
        self.class_average = bool(class_average)

    def _terms(self, features, y, class_means, valid, centre=None):
        B = features.shape[0]
        K = class_means.shape[0]
        with no_autocast(features):
            f = fp32_up(features)
            mu = class_means.detach().to(f.dtype)
            if centre is not None:  # contrast directions about a centre (see ``forward``)
                c0 = centre.to(f.dtype).reshape(1, -1)
                f, mu = f - c0, mu - c0.detach()
            z = F.normalize(f, dim=1)
            norm = mu.norm(dim=1)
            c = mu / norm.clamp_min(1e-12)[:, None]
            ok = norm > 1e-12
            if valid is not None:
                ok = ok & valid.to(device=ok.device, dtype=torch.bool)
            cand = torch.cat([z, c], dim=0)
            cand_labels = torch.cat([y, torch.arange(K, device=y.device)])
            logits = z @ cand.T / self.tau  # B x (B + K)
            if self.sample_pairs:
                batch_allowed = ~torch.eye(B, dtype=torch.bool, device=z.device)
            else:
                batch_allowed = torch.zeros(B, B, dtype=torch.bool, device=z.device)
            allowed = torch.cat([batch_allowed, ok[None, :].expand(B, K)], dim=1)
            loss, has_pos, log_share = class_averaged_contrast(
                logits, y, cand_labels, allowed, K, self.class_average
            )
        return loss, has_pos, log_share, cand_labels, K

    def forward(
        self,
        features: torch.Tensor,
        y: torch.Tensor,
        class_means: torch.Tensor,
        valid: Optional[torch.Tensor] = None,
        reduction: str = "mean",
        centre: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """``centre`` (d): subtracted from the features and the class means before they are
        normalised, so that the contrast acts on directions about that centre (the
        class-balanced global mean makes it the centred geometry that P2P and the NC metrics
        measure) instead of about the origin (method.hycon.centre). A gradient it carries
        reaches the features through their side only (the class means stay detached):
        method.hycon.centre_gradient."""
        loss, has_pos, _, _, _ = self._terms(features, y, class_means, valid, centre)
        if reduction == "none":
            return loss
        return reduce_anchors(loss, has_pos)

    def has_positive(self, features, y, class_means, valid=None) -> torch.Tensor:
        """(B bool): which anchors have at least one positive (and so enter the mean)."""
        return self._terms(features, y, class_means, valid)[1]

    @torch.no_grad()
    def denominator_class_shares(self, features, y, class_means, valid=None) -> torch.Tensor:
        """(B x K): each class's share of each anchor's denominator (a diagnostic)."""
        _, _, log_share, cand_labels, K = self._terms(features, y, class_means, valid)
        return class_shares(log_share, cand_labels, K)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, sample_pairs={self.sample_pairs}, class_average={self.class_average}"

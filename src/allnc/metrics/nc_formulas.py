"""Neural-collapse formulas: pure functions of tensors (NC1..NC4, equinorm, equiangularity,
maximal angle, Gram/ETF distance, self-duality, cosine matrices and group cosines/norms).

Definitions follow docs/reference.md and are written out, with sources, in docs/metrics.md.
Conventions:

* features h (d), labels y in [0, K); classifier W is K x d (row c = w_c), bias b (K);
* class means mu_c, global mean mu_G, and "centred means" as a K x d array whose row c is
  mu_c - mu_G (the transpose of the d x K matrix M of the papers);
* Sigma_W = within-class covariance, Sigma_B = (1/K) sum_c (mu_c - mu_G)(mu_c - mu_G)^T;
* two variants: **sample-weighted** (mu_G = mean of all samples, Sigma_W pooled over
  samples: (1/N) sum_c sum_i ...) as in Papyan et al., and **class-balanced** (mu_G = mean
  of the class means, Sigma_W = (1/K) sum_c (1/n_c) sum_i ...), which is not dominated by
  the head classes of a long-tailed set;
* standard deviations are population ones (ddof = 0); multiply by sqrt(n/(n-1)) to get
  the ddof = 1 figure some public code prints.

Every function takes tensors or array-likes, computes in float64 and keeps no state.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

F64 = torch.float64

__all__ = [
    "F64", "as_f64", "json_float", "check_classifier",
    "between_class_cov", "nc1", "equinorm", "cosine_matrix", "equiangularity", "max_angle",
    "gram_etf_distance", "self_duality", "per_class_self_duality", "mean_pairwise_cosine",
    "mean_cross_cosine", "norm_ratio", "nc4",
]


def as_f64(x, device=None) -> torch.Tensor:
    """A float64 torch tensor (detached) from a tensor or array-like."""
    t = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return t.to(device=device if device is not None else t.device, dtype=F64)


def json_float(x) -> Optional[float]:
    """A JSON-ready float: NaN / inf / None -> None."""
    if x is None:
        return None
    v = float(x)
    return v if math.isfinite(v) else None


def _offdiag(C: torch.Tensor) -> torch.Tensor:
    """The K(K-1) off-diagonal entries of a K x K matrix."""
    K = C.shape[0]
    return C[~torch.eye(K, dtype=torch.bool, device=C.device)]


# ====================================================================== pure metrics
def between_class_cov(centred: torch.Tensor) -> torch.Tensor:
    """Sigma_B = (1/K) sum_c (mu_c - mu_G)(mu_c - mu_G)^T from the K x d centred means."""
    c = as_f64(centred)
    return c.T @ c / c.shape[0]


def nc1(sigma_w, centred, max_rank: Optional[int] = None, rtol: Optional[float] = None) -> Optional[float]:
    """NC1 = Tr(Sigma_W Sigma_B^+) / K  (Papyan, Han & Donoho, PNAS 2020).

    ``sigma_w``: d x d within-class covariance; ``centred``: K x d, row c = mu_c - mu_G
    (so Sigma_B = centred^T centred / K). Sigma_B^+ is the Moore-Penrose pseudo-inverse,
    computed exactly from the thin SVD centred = U S V^T rather than by inverting the d x d
    matrix: Sigma_B^+ = K V S^-2 V^T, so

        NC1 = Tr(Sigma_W Sigma_B^+) / K = sum_j  v_j^T Sigma_W v_j / s_j^2.

    Directions kept: at most ``max_rank`` (default K - 1: centring makes the K centred
    means linearly dependent, as in Papyan et al.'s code, which keeps the top K-1
    eigenvectors of Sigma_B) with s_j > rtol * s_max (default rtol = max(K, d) * eps,
    the usual pinv/matrix-rank tolerance). ``None`` for K < 2 or Sigma_B = 0.
    """
    M = as_f64(centred)
    K, d = M.shape
    if K < 2:
        return None
    SW = as_f64(sigma_w, M.device)
    if SW.shape != (d, d):
        raise ValueError(f"sigma_w is {tuple(SW.shape)}, expected ({d}, {d})")
    _, S, Vh = torch.linalg.svd(M, full_matrices=False)
    if S.numel() == 0 or float(S[0]) == 0.0:
        return None
    if rtol is None:
        rtol = max(K, d) * torch.finfo(F64).eps
    r = int((S > rtol * S[0]).sum())
    r = min(r, K - 1 if max_rank is None else max_rank)
    V = Vh[:r]  # r x d, rows = right singular vectors
    quad = ((V @ SW) * V).sum(dim=1)  # v_j^T Sigma_W v_j
    return float((quad / S[:r] ** 2).sum())


def equinorm(vectors) -> Optional[float]:
    """NC2 equinorm: std_c ||v_c|| / mean_c ||v_c|| over the K rows (Papyan et al. 2020).

    Rows are the centred class means mu_c - mu_G or the classifier vectors w_c.
    Population std (ddof = 0). 0 for equal norms.
    """
    V = as_f64(vectors)
    if V.shape[0] < 1:
        return None
    n = V.norm(dim=1)
    m = n.mean()
    if float(m) == 0.0:
        return None
    return float(n.std(correction=0) / m)


def cosine_matrix(A, B=None) -> torch.Tensor:
    """K_A x K_B matrix of cos(a_i, b_j) between rows (B defaults to A). Zero rows -> NaN."""
    A = as_f64(A)
    B = A if B is None else as_f64(B, A.device)
    An = A / A.norm(dim=1, keepdim=True)
    Bn = B / B.norm(dim=1, keepdim=True)
    return An @ Bn.T


def equiangularity(vectors) -> Optional[float]:
    """NC2 equiangularity: std over c != c' of cos(v_c, v_c') (Papyan et al. 2020).

    Population std; 0 when all pairwise angles are equal. ``None`` for K < 2.
    """
    V = as_f64(vectors)
    if V.shape[0] < 2:
        return None
    return float(_offdiag(cosine_matrix(V)).std(correction=0))


def max_angle(vectors) -> Optional[float]:
    """NC2 maximal-angle form: mean over c != c' of |cos(v_c, v_c') + 1/(K-1)|.

    (Papyan et al. 2020.) 0 for a simplex ETF. ``None`` for K < 2.
    """
    V = as_f64(vectors)
    K = V.shape[0]
    if K < 2:
        return None
    return float((_offdiag(cosine_matrix(V)) + 1.0 / (K - 1)).abs().mean())


def gram_etf_distance(vectors) -> Optional[float]:
    """NC2 Gram form: || G/||G||_F - (I - 11^T/K)/sqrt(K-1) ||_F with G = V V^T (K x K).

    For centred means V^T = M, G = M^T M; for the classifier V = W, G = W W^T (Zhu et al.,
    NeurIPS 2021, "A geometric analysis of neural collapse with unconstrained features";
    see also Tirer & Bruna, ICML 2022). ||I - 11^T/K||_F =
    sqrt(K-1), so the target has unit norm; 0 for a simplex ETF of any scale.
    """
    V = as_f64(vectors)
    K = V.shape[0]
    if K < 2:
        return None
    G = V @ V.T
    gn = G.norm()
    if float(gn) == 0.0:
        return None
    target = (torch.eye(K, dtype=F64, device=V.device) - 1.0 / K) / math.sqrt(K - 1)
    return float((G / gn - target).norm())


def self_duality(W, centred) -> Optional[float]:
    """NC3: || W^T/||W||_F - M/||M||_F ||_F^2 (Papyan et al. 2020), W and centred K x d.

    0 when the classifier is a positive multiple of the centred means.
    """
    W = as_f64(W)
    M = as_f64(centred, W.device)
    if W.shape != M.shape:
        raise ValueError(f"W is {tuple(W.shape)} but the centred means are {tuple(M.shape)}")
    wn, mn = W.norm(), M.norm()
    if float(wn) == 0.0 or float(mn) == 0.0:
        return None
    return float(((W / wn - M / mn) ** 2).sum())


def per_class_self_duality(W, centred) -> torch.Tensor:
    """cos(w_c, mu_c - mu_G) for every class (K values; 1 = perfect per-class duality)."""
    W = as_f64(W)
    M = as_f64(centred, W.device)
    return (W * M).sum(1) / (W.norm(dim=1) * M.norm(dim=1))


def mean_pairwise_cosine(vectors) -> Optional[float]:
    """Mean over c != c' of cos(v_c, v_c') among the given rows (Fang et al., PNAS 2021:
    minority collapse drives it to 1 for the minority classifiers; -1/(K-1) for an ETF
    of K vectors). ``None`` for fewer than 2 rows."""
    V = as_f64(vectors)
    if V.shape[0] < 2:
        return None
    return json_float(_offdiag(cosine_matrix(V)).mean())


def mean_cross_cosine(A, B) -> Optional[float]:
    """Mean of cos(a, b) over all pairs of a row of A and a row of B (None if one is empty)."""
    A, B = as_f64(A), as_f64(B)
    if A.shape[0] == 0 or B.shape[0] == 0:
        return None
    return json_float(cosine_matrix(A, B).mean())


def norm_ratio(A, B) -> Optional[float]:
    """mean_a ||a|| / mean_b ||b|| (None if a side is empty or the denominator is 0)."""
    A, B = as_f64(A), as_f64(B)
    if A.shape[0] == 0 or B.shape[0] == 0:
        return None
    den = float(B.norm(dim=1).mean())
    return json_float(float(A.norm(dim=1).mean()) / den) if den > 0 else None


def nc4(classifier_pred, ncm_pred) -> Optional[float]:
    """NC4: fraction of samples where argmax_c (W h + b)_c differs from the nearest class
    mean argmin_c ||h - mu_c|| (Papyan et al. 2020). Inputs: two label vectors."""
    a = torch.as_tensor(classifier_pred).reshape(-1)
    b = torch.as_tensor(ncm_pred).reshape(-1).to(a.device)
    if a.numel() == 0:
        return None
    return float((a != b).double().mean())


def check_classifier(W, K: int, d: int) -> torch.Tensor:
    """``W`` as a float64 K x d tensor; a wrong shape is a ValueError that names the fix."""
    W = as_f64(W)
    if W.dim() != 2:
        raise ValueError(f"classifier W must be a K x d matrix, got shape {tuple(W.shape)}")
    if tuple(W.shape) != (K, d):
        if tuple(W.shape) == (d, K):
            raise ValueError(f"classifier W has shape {tuple(W.shape)} = (d, K); expected (K, d) = "
                             f"({K}, {d}) (rows = classes, like nn.Linear.weight): pass W.T")
        raise ValueError(f"classifier W has shape {tuple(W.shape)}, expected (K, d) = ({K}, {d}); "
                         f"the features must be the ones the classifier reads")
    return W

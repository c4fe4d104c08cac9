"""Neural-collapse (NC) diagnostics: streaming accumulators and pure metric functions.

Definitions follow docs/reference.md and are written out, with sources, in docs/metrics.md.
Conventions used throughout this module:

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

Design of the first pass (``ClassStatsAccumulator``): ONE pass over the data, memory
O(K d + G d^2) with G <= 3 groups, never O(N d). It keeps per-class counts and sums and,
per many/medium/few group, the second moment sum_i (h_i - c)(h_i - c)^T and (when the
split's class counts are known up front) the class-weighted one sum_i (1/n_{y_i})
(h_i - c)(h_i - c)^T, all in float64. The within-class scatter follows from
sum_i (h - mu_c)(h - mu_c)^T = sum_i (h - c)(h - c)^T - n_c (mu_c - c)(mu_c - c)^T.
Why one pass rather than "means, then centred scatter": features come from a network
forward pass, the expensive part; a second pass is needed only for NC4 (``NCMAccumulator``)
and NC1-NC3 are then available from the first pass alone (e.g. for tracking during
training). Cancellation, the usual objection to the moment formula, is handled by (i)
converting every batch to float64 BEFORE any product (float32 in, float64 accumulated),
and (ii) a shift c = the mean of the first batch (a "shifted data" algorithm), which
removes the large common offset of post-ReLU features, so the subtraction above only
cancels the between-class part (a loss of log10(Tr Sigma_B / Tr Sigma_W) digits out of
16). Group-wise moments are what makes NC1 inside a group computable in one pass.
"""
from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from ..dist import all_reduce_sum, is_dist
from .accuracy import GROUP_NAMES, group_classes

F64 = torch.float64

__all__ = [
    "ClassStats", "ClassStatsAccumulator", "NCMAccumulator",
    "between_class_cov", "nc1", "equinorm", "cosine_matrix", "equiangularity", "max_angle",
    "gram_etf_distance", "self_duality", "per_class_self_duality", "mean_pairwise_cosine",
    "mean_cross_cosine", "norm_ratio", "nc4", "compute_nc", "cosine_matrices", "nc_summary",
    "save_nc", "SUMMARY_KEYS",
]


# ============================================================================ helpers
def _t64(x, device=None) -> torch.Tensor:
    """A float64 torch tensor (detached) from a tensor or array-like."""
    t = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return t.to(device=device if device is not None else t.device, dtype=F64)


def _float(x) -> Optional[float]:
    """A JSON-ready float: NaN / inf / None -> None."""
    if x is None:
        return None
    v = float(x)
    return v if math.isfinite(v) else None


def _batch(features, labels, dim: int, device, dtype=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(features B x dim, labels B) on ``device``, checked; ``dtype`` converts the features."""
    h = torch.as_tensor(features).detach()
    if dtype is not None:
        h = h.to(device, dtype)
    if h.dim() != 2 or h.shape[1] != dim:
        raise ValueError(f"features must be B x {dim}, got {tuple(h.shape)}")
    y = torch.as_tensor(labels).detach().to(device, torch.int64).reshape(-1)
    if y.numel() != h.shape[0]:
        raise ValueError(f"{h.shape[0]} feature rows for {y.numel()} labels")
    return h, y


def _offdiag(C: torch.Tensor) -> torch.Tensor:
    K = C.shape[0]
    return C[~torch.eye(K, dtype=torch.bool, device=C.device)]


# ====================================================================== pure metrics
def between_class_cov(centred: torch.Tensor) -> torch.Tensor:
    """Sigma_B = (1/K) sum_c (mu_c - mu_G)(mu_c - mu_G)^T from the K x d centred means."""
    c = _t64(centred)
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
    M = _t64(centred)
    K, d = M.shape
    if K < 2:
        return None
    SW = _t64(sigma_w, M.device)
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
    V = _t64(vectors)
    if V.shape[0] < 1:
        return None
    n = V.norm(dim=1)
    m = n.mean()
    if float(m) == 0.0:
        return None
    return float(n.std(correction=0) / m)


def cosine_matrix(A, B=None) -> torch.Tensor:
    """K_A x K_B matrix of cos(a_i, b_j) between rows (B defaults to A). Zero rows -> NaN."""
    A = _t64(A)
    B = A if B is None else _t64(B, A.device)
    An = A / A.norm(dim=1, keepdim=True)
    Bn = B / B.norm(dim=1, keepdim=True)
    return An @ Bn.T


def equiangularity(vectors) -> Optional[float]:
    """NC2 equiangularity: std over c != c' of cos(v_c, v_c') (Papyan et al. 2020).

    Population std; 0 when all pairwise angles are equal. ``None`` for K < 2.
    """
    V = _t64(vectors)
    if V.shape[0] < 2:
        return None
    return float(_offdiag(cosine_matrix(V)).std(correction=0))


def max_angle(vectors) -> Optional[float]:
    """NC2 maximal-angle form: mean over c != c' of |cos(v_c, v_c') + 1/(K-1)|.

    (Papyan et al. 2020.) 0 for a simplex ETF. ``None`` for K < 2.
    """
    V = _t64(vectors)
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
    V = _t64(vectors)
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
    W = _t64(W)
    M = _t64(centred, W.device)
    if W.shape != M.shape:
        raise ValueError(f"W is {tuple(W.shape)} but the centred means are {tuple(M.shape)}")
    wn, mn = W.norm(), M.norm()
    if float(wn) == 0.0 or float(mn) == 0.0:
        return None
    return float(((W / wn - M / mn) ** 2).sum())


def per_class_self_duality(W, centred) -> torch.Tensor:
    """cos(w_c, mu_c - mu_G) for every class (K values; 1 = perfect per-class duality)."""
    W = _t64(W)
    M = _t64(centred, W.device)
    return (W * M).sum(1) / (W.norm(dim=1) * M.norm(dim=1))


def mean_pairwise_cosine(vectors) -> Optional[float]:
    """Mean over c != c' of cos(v_c, v_c') among the given rows (Fang et al., PNAS 2021:
    minority collapse drives it to 1 for the minority classifiers; -1/(K-1) for an ETF
    of K vectors). ``None`` for fewer than 2 rows."""
    V = _t64(vectors)
    if V.shape[0] < 2:
        return None
    return _float(_offdiag(cosine_matrix(V)).mean())


def mean_cross_cosine(A, B) -> Optional[float]:
    """Mean of cos(a, b) over all pairs of a row of A and a row of B (None if one is empty)."""
    A, B = _t64(A), _t64(B)
    if A.shape[0] == 0 or B.shape[0] == 0:
        return None
    return _float(cosine_matrix(A, B).mean())


def norm_ratio(A, B) -> Optional[float]:
    """mean_a ||a|| / mean_b ||b|| (None if a side is empty or the denominator is 0)."""
    A, B = _t64(A), _t64(B)
    if A.shape[0] == 0 or B.shape[0] == 0:
        return None
    den = float(B.norm(dim=1).mean())
    return _float(float(A.norm(dim=1).mean()) / den) if den > 0 else None


def nc4(classifier_pred, ncm_pred) -> Optional[float]:
    """NC4: fraction of samples where argmax_c (W h + b)_c differs from the nearest class
    mean argmin_c ||h - mu_c|| (Papyan et al. 2020). Inputs: two label vectors."""
    a = torch.as_tensor(classifier_pred).reshape(-1)
    b = torch.as_tensor(ncm_pred).reshape(-1).to(a.device)
    if a.numel() == 0:
        return None
    return float((a != b).double().mean())


# ============================================================ pass 1: class statistics
@dataclass
class ClassStats:
    """What pass 1 knows about one split (float64 torch tensors on the accumulator device).

    ``within[g]`` = sum_{c in group g} sum_i (h_i - mu_c)(h_i - mu_c)^T (d x d);
    ``within_cb[g]`` = sum_{c in g} (1/n_c) sum_i (h_i - mu_c)(h_i - mu_c)^T, or ``None``
    when the split's class counts were not given up front (or disagree with the data).
    ``means`` rows of classes with no sample are NaN.
    """

    num_classes: int
    dim: int
    counts: np.ndarray  # int64 (K,), samples per class in this split
    means: torch.Tensor  # (K, d)
    group_names: list[str]
    group_of_class: np.ndarray  # int (K,), index into group_names
    within: torch.Tensor  # (G, d, d)
    within_cb: Optional[torch.Tensor]  # (G, d, d) or None
    train_counts: Optional[np.ndarray] = None
    notes: list[str] = field(default_factory=list)

    @property
    def present(self) -> np.ndarray:
        return self.counts > 0

    @property
    def num_samples(self) -> int:
        return int(self.counts.sum())

    def sigma_w(self, class_balanced: bool = False) -> Optional[torch.Tensor]:
        """Sigma_W of the whole split: pooled (1/N) sum, or class-balanced (1/K) sum_c (1/n_c)."""
        if class_balanced:
            if self.within_cb is None:
                return None
            return self.within_cb.sum(0) / int(self.present.sum())
        return self.within.sum(0) / self.num_samples


class ClassStatsAccumulator:
    """Pass 1: per-class counts and means, within-class scatter (float64, streaming).

    ``update(features, labels)``: features B x d (CPU or GPU, any float dtype), labels B.
    ``class_counts``: the number of samples of each class in THIS split, known up front
    (e.g. ``np.bincount(split.targets)``); needed for the class-balanced Sigma_W. Checked
    against the data in ``result()``.
    ``train_counts``: TRAINING counts; they define the many/medium/few groups for which
    separate moments are kept (NC1 inside a group). Without them, one group "all".
    ``all_reduce()`` sums over data-parallel ranks (call once, on every rank, after the
    last update); ``result()`` -> :class:`ClassStats`.
    Memory: K d (sums) + G d^2 (+ G d^2 weighted) float64 numbers, G <= 3.
    """

    def __init__(self, num_classes: int, dim: int, device: torch.device | str = "cpu",
                 class_counts: Optional[Sequence[int]] = None,
                 train_counts: Optional[Sequence[int]] = None):
        K, d = int(num_classes), int(dim)
        if K < 1 or d < 1:
            raise ValueError(f"num_classes and dim must be >= 1, got {K}, {d}")
        self.num_classes, self.dim = K, d
        self.device = torch.device(device)
        if train_counts is not None:
            tc = np.asarray(train_counts, dtype=np.int64).reshape(-1)
            if tc.shape[0] != K:
                raise ValueError(f"train_counts has {tc.shape[0]} entries, expected {K}")
            groups = group_classes(tc)
            self.group_names = [g for g in GROUP_NAMES if groups[g]]
            gid = np.zeros(K, dtype=np.int64)
            for i, g in enumerate(self.group_names):
                gid[groups[g]] = i
            self.train_counts: Optional[np.ndarray] = tc
        else:
            self.group_names = ["all"]
            gid = np.zeros(K, dtype=np.int64)
            self.train_counts = None
        self.group_of_class = gid
        self._gid = torch.as_tensor(gid, device=self.device)
        G = len(self.group_names)
        self.counts = torch.zeros(K, dtype=torch.int64, device=self.device)
        self.sums = torch.zeros(K, d, dtype=F64, device=self.device)  # sums of (h - shift)
        self.second = torch.zeros(G, d, d, dtype=F64, device=self.device)
        self.shift: Optional[torch.Tensor] = None
        if class_counts is not None:
            cc = np.asarray(class_counts, dtype=np.int64).reshape(-1)
            if cc.shape[0] != K:
                raise ValueError(f"class_counts has {cc.shape[0]} entries, expected {K}")
            self.class_counts: Optional[np.ndarray] = cc
            w = np.where(cc > 0, 1.0 / np.maximum(cc, 1), 0.0)
            self._w = torch.as_tensor(w, dtype=F64, device=self.device)
            self.second_w: Optional[torch.Tensor] = torch.zeros(G, d, d, dtype=F64, device=self.device)
        else:
            self.class_counts = None
            self._w = None
            self.second_w = None
        self._reduced = False

    # ---------------------------------------------------------------- sizes
    def nbytes(self) -> int:
        """Bytes held by the accumulator's state tensors."""
        ts = [self.counts, self.sums, self.second, self._gid]
        ts += [t for t in (self.second_w, self._w, self.shift) if t is not None]
        return sum(t.numel() * t.element_size() for t in ts)

    # ---------------------------------------------------------------- streaming
    @torch.no_grad()
    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        if self._reduced:
            raise RuntimeError("update after all_reduce(): sums would be counted twice")
        h, y = _batch(features, labels, self.dim, self.device)
        if y.numel() == 0:
            return
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= self.num_classes:
            raise ValueError(f"labels must lie in [0, {self.num_classes}), got [{lo}, {hi}]")
        h = h.to(device=self.device, dtype=F64)  # float64 BEFORE any arithmetic
        if self.shift is None:
            self.shift = h.mean(0)
        h = h - self.shift  # a new tensor: the caller's features are never modified
        self.counts += torch.bincount(y, minlength=self.num_classes)
        self.sums.index_add_(0, y, h)
        wy = self._w[y] if self._w is not None else None
        G = len(self.group_names)
        if G == 1:
            parts = [(0, h, wy)]
        else:
            gid = self._gid[y]
            parts = []
            for g in range(G):
                sel = (gid == g).nonzero(as_tuple=True)[0]
                if sel.numel():
                    parts.append((g, h.index_select(0, sel),
                                  wy.index_select(0, sel) if wy is not None else None))
        for g, hg, wg in parts:
            self.second[g].addmm_(hg.T, hg)
            if wg is not None:
                self.second_w[g].addmm_((hg * wg[:, None]).T, hg)

    @torch.no_grad()
    def _recentre(self, new_shift: torch.Tensor) -> None:
        """Express the moments about ``new_shift`` instead of the current shift (exact):
        sum (h-c')(h-c')^T = S - delta s^T - s delta^T + n delta delta^T, delta = c' - c."""
        new_shift = new_shift.to(self.device, F64)
        if self.shift is None:
            self.shift = new_shift.clone()
            return
        delta = new_shift - self.shift
        n = self.counts.to(F64)
        for g in range(len(self.group_names)):
            m = torch.as_tensor(self.group_of_class == g, device=self.device)
            s = self.sums[m].sum(0)
            ng = n[m].sum()
            self.second[g] += -torch.outer(delta, s) - torch.outer(s, delta) + ng * torch.outer(delta, delta)
            if self.second_w is not None:
                w = self._w[m]
                sw = (w[:, None] * self.sums[m]).sum(0)
                nw = (w * n[m]).sum()
                self.second_w[g] += (-torch.outer(delta, sw) - torch.outer(sw, delta)
                                     + nw * torch.outer(delta, delta))
        self.sums -= n[:, None] * delta[None, :]
        self.shift = new_shift.clone()

    @torch.no_grad()
    def merge(self, other: "ClassStatsAccumulator") -> None:
        """Add another accumulator's data (same K, d, groups and class_counts) into this one.
        ``other`` is left unchanged."""
        if (other.num_classes, other.dim, other.group_names) != (self.num_classes, self.dim, self.group_names):
            raise ValueError("merge: accumulators differ in classes, dim or groups")
        if (self.class_counts is None) != (other.class_counts is None) or (
                self.class_counts is not None and not np.array_equal(self.class_counts, other.class_counts)):
            raise ValueError("merge: accumulators differ in class_counts")
        if other.shift is None:
            return
        o = _clone_acc(other, self.device)
        if self.shift is None:
            self.shift = o.shift.clone()
        o._recentre(self.shift)
        self.counts += o.counts
        self.sums += o.sums
        self.second += o.second
        if self.second_w is not None:
            self.second_w += o.second_w

    @torch.no_grad()
    def all_reduce(self) -> None:
        """Sum over data-parallel ranks with ``all_reduce_sum`` (identity in one process).

        Ranks first agree on a common shift (the count-weighted mean of their shifts, itself
        all-reduced) and re-express their moments about it, then sum. Idempotent.
        """
        if self._reduced:
            return
        if is_dist():
            n_local = self.counts.sum().to(F64)
            shift = self.shift if self.shift is not None else torch.zeros(self.dim, dtype=F64, device=self.device)
            buf = torch.cat([shift * n_local, n_local.reshape(1)])
            all_reduce_sum(buf)
            common = buf[:-1] / buf[-1] if float(buf[-1]) > 0 else torch.zeros_like(shift)
            self._recentre(common)
            tensors = [self.counts, self.sums, self.second]
            if self.second_w is not None:
                tensors.append(self.second_w)
            all_reduce_sum(*tensors)
        self._reduced = True

    @torch.no_grad()
    def result(self) -> ClassStats:
        K, d = self.num_classes, self.dim
        counts = self.counts.cpu().numpy().astype(np.int64)
        present_t = self.counts > 0
        n = self.counts.to(F64).clamp(min=1)
        shifted_means = self.sums / n[:, None]  # mu_c - shift (0 for absent classes)
        shift = self.shift if self.shift is not None else torch.zeros(d, dtype=F64, device=self.device)
        means = shifted_means + shift[None, :]
        means[~present_t] = float("nan")
        notes: list[str] = []
        G = len(self.group_names)
        within = torch.empty_like(self.second)
        for g in range(G):
            m = torch.as_tensor(self.group_of_class == g, device=self.device) & present_t
            mg = shifted_means[m]
            S = self.second[g] - (mg * self.counts[m].to(F64)[:, None]).T @ mg
            within[g] = (S + S.T) / 2
        within_cb = None
        if self.second_w is not None:
            if np.array_equal(counts, self.class_counts):
                within_cb = torch.empty_like(self.second_w)
                for g in range(G):
                    m = torch.as_tensor(self.group_of_class == g, device=self.device) & present_t
                    mg = shifted_means[m]
                    S = self.second_w[g] - mg.T @ mg
                    within_cb[g] = (S + S.T) / 2
            else:
                bad = np.nonzero(counts != self.class_counts)[0]
                msg = (f"class_counts given up front disagree with the samples seen for "
                       f"{len(bad)} classes (first: class {int(bad[0])}: {int(self.class_counts[bad[0]])} "
                       f"given, {int(counts[bad[0]])} seen); class-balanced Sigma_W not computed")
                warnings.warn(msg)
                notes.append(msg)
        else:
            notes.append("class_counts of the split were not given up front: class-balanced "
                         "Sigma_W (and class-balanced NC1) not computed")
        return ClassStats(num_classes=K, dim=d, counts=counts, means=means,
                          group_names=list(self.group_names), group_of_class=self.group_of_class.copy(),
                          within=within, within_cb=within_cb,
                          train_counts=None if self.train_counts is None else self.train_counts.copy(),
                          notes=notes)


def _clone_acc(a: ClassStatsAccumulator, device) -> ClassStatsAccumulator:
    b = ClassStatsAccumulator.__new__(ClassStatsAccumulator)
    b.__dict__.update(a.__dict__)
    b.device = torch.device(device)
    for k in ("counts", "sums", "second", "second_w", "shift", "_w", "_gid"):
        v = getattr(a, k)
        setattr(b, k, None if v is None else v.to(device).clone())
    return b


# ================================================================== pass 2: NCM / NC4
class NCMAccumulator:
    """Pass 2: NC4, classifier accuracy and nearest-class-mean (NCM) accuracy.

    ``means``: K x d class means (a :class:`ClassStats` or an array; NaN rows = classes
    absent from the split that gave the means, never chosen by NCM) -- normally the
    TRAINING means, also when streaming the test split. ``W``: K x d, ``b``: K or None.
    Computed in float64. ``update(features, labels)``; ``all_reduce()``; ``result()``.
    """

    def __init__(self, means, W, b=None, device: Optional[torch.device | str] = None):
        mu = means.means if isinstance(means, ClassStats) else means
        mu = _t64(mu)
        self.device = torch.device(device) if device is not None else mu.device
        mu = mu.to(self.device)
        K, d = mu.shape
        W = _check_w(W, K, d).to(self.device)
        self.num_classes, self.dim = K, d
        valid = ~torch.isnan(mu).any(dim=1)
        if not bool(valid.any()):
            raise ValueError("NCMAccumulator: no class has a mean")
        self.means = torch.where(valid[:, None], mu, torch.zeros_like(mu))
        self.mu_sq = (self.means ** 2).sum(1)
        self.mu_sq[~valid] = float("inf")
        self.W = W
        self.b = _t64(b, self.device).reshape(-1) if b is not None else torch.zeros(K, dtype=F64, device=self.device)
        if self.b.shape[0] != K:
            raise ValueError(f"bias has {self.b.shape[0]} entries, expected {K}")
        z = lambda: torch.zeros(K, dtype=torch.int64, device=self.device)  # noqa: E731
        self.total, self.disagree, self.clf_correct, self.ncm_correct = z(), z(), z(), z()
        self._reduced = False

    @torch.no_grad()
    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        if self._reduced:
            raise RuntimeError("update after all_reduce(): counts would be summed twice")
        h, y = _batch(features, labels, self.dim, self.device, F64)
        if y.numel() == 0:
            return
        K = self.num_classes
        pc = (h @ self.W.T + self.b).argmax(1)
        pn = (self.mu_sq[None, :] - 2.0 * (h @ self.means.T)).argmin(1)  # ||h - mu||^2 - ||h||^2
        self.total += torch.bincount(y, minlength=K)
        self.disagree += torch.bincount(y[pc != pn], minlength=K)
        self.clf_correct += torch.bincount(y[pc == y], minlength=K)
        self.ncm_correct += torch.bincount(y[pn == y], minlength=K)

    def all_reduce(self) -> None:
        if self._reduced:
            return
        all_reduce_sum(self.total, self.disagree, self.clf_correct, self.ncm_correct)
        self._reduced = True

    def result(self) -> dict:
        """{"nc4": fraction, "classifier_acc": %, "ncm_acc": %, "num_samples": N,
        "per_class": {"count", "disagree", "classifier_correct", "ncm_correct"} (K-lists)}."""
        t, dis = self.total.cpu().numpy(), self.disagree.cpu().numpy()
        cc, nc = self.clf_correct.cpu().numpy(), self.ncm_correct.cpu().numpy()
        n = int(t.sum())
        return {
            "nc4": int(dis.sum()) / n if n else None,
            "classifier_acc": 100.0 * int(cc.sum()) / n if n else None,
            "ncm_acc": 100.0 * int(nc.sum()) / n if n else None,
            "num_samples": n,
            "per_class": {"count": t.tolist(), "disagree": dis.tolist(),
                          "classifier_correct": cc.tolist(), "ncm_correct": nc.tolist()},
        }


def _check_w(W, K: int, d: int) -> torch.Tensor:
    W = _t64(W)
    if W.dim() != 2:
        raise ValueError(f"classifier W must be a K x d matrix, got shape {tuple(W.shape)}")
    if tuple(W.shape) != (K, d):
        if tuple(W.shape) == (d, K):
            raise ValueError(f"classifier W has shape {tuple(W.shape)} = (d, K); expected (K, d) = "
                             f"({K}, {d}) (rows = classes, like nn.Linear.weight): pass W.T")
        raise ValueError(f"classifier W has shape {tuple(W.shape)}, expected (K, d) = ({K}, {d}); "
                         f"the features must be the ones the classifier reads")
    return W


# ========================================================================= compute_nc
def _variant(stats: ClassStats, W: torch.Tensor, idx: torch.Tensor, class_balanced: bool) -> tuple[dict, torch.Tensor]:
    mu = stats.means[idx]
    if class_balanced:
        mu_g = mu.mean(0)
    else:
        n = torch.as_tensor(stats.counts, device=mu.device)[idx].to(F64)
        mu_g = (n[:, None] * mu).sum(0) / n.sum()
    M = mu - mu_g
    SW = stats.sigma_w(class_balanced)
    out = {
        "nc1": _float(nc1(SW, M)) if SW is not None else None,
        "tr_sigma_w": _float(torch.trace(SW)) if SW is not None else None,
        "tr_sigma_b": _float(torch.trace(between_class_cov(M))),
        "nc2_equinorm_means": _float(equinorm(M)),
        "nc2_equiangular_means": _float(equiangularity(M)),
        "nc2_maxangle_means": _float(max_angle(M)),
        "nc2_gram_means": _float(gram_etf_distance(M)),
        "mean_cos_means": mean_pairwise_cosine(M),
        "nc3": _float(self_duality(W[idx], M)),
    }
    return out, M


def _group_nc1(stats: ClassStats, g: int, cls: list[int], class_balanced: bool) -> Optional[float]:
    if len(cls) < 2:
        return None
    mu = stats.means[cls]
    n = torch.as_tensor(stats.counts[cls], dtype=F64, device=mu.device)
    if class_balanced:
        if stats.within_cb is None:
            return None
        SW = stats.within_cb[g] / len(cls)
        mu_g = mu.mean(0)
    else:
        SW = stats.within[g] / n.sum()
        mu_g = (n[:, None] * mu).sum(0) / n.sum()
    return _float(nc1(SW, mu - mu_g))


def _resolve_ncm(ncm) -> Optional[dict]:
    if ncm is None:
        return None
    return ncm.result() if hasattr(ncm, "result") else ncm


@torch.no_grad()
def compute_nc(stats: ClassStats, W, b=None, train_counts: Optional[Sequence[int]] = None,
               ncm=None) -> dict:
    """All NC figures of one split, as a JSON-ready nested dict.

    ``stats``: pass-1 :class:`ClassStats`; ``W``: K x d classifier (``b`` is recorded only:
    NC1-NC3 do not use it; NC4 takes it through ``ncm``); ``train_counts``: TRAINING counts
    for the many/medium/few groups (default: the ones the accumulator got);
    ``ncm``: an :class:`NCMAccumulator` or its ``result()``, for NC4.

    Layout (see docs/metrics.md for every formula)::

        {"info": {num_classes, present_classes, num_samples, dim, excluded_classes, notes, has_bias},
         "sample_weighted": {nc1, tr_sigma_w, tr_sigma_b, nc2_equinorm_means,
                             nc2_equiangular_means, nc2_maxangle_means, nc2_gram_means,
                             mean_cos_means, nc3},
         "class_balanced":  {same keys},
         "classifier": {nc2_equinorm_w, nc2_equiangular_w, nc2_maxangle_w, nc2_gram_w,
                        mean_cos_w, w_norm_mean},
         "nc4": {nc4, classifier_acc, ncm_acc, num_samples} | None,
         "groups": {"many"|"medium"|"few": {num_classes, present_classes, nc1, nc1_class_balanced,
                                            w_cos_mean, means_cos_mean, w_norm_mean,
                                            means_norm_mean, self_duality_cos_mean, nc4},
                    "cross": {"many-medium"|"many-few"|"medium-few": {w_cos_mean, means_cos_mean}},
                    "norm_ratios": {w_many_over_few, means_many_over_few, w_many_over_medium,
                                    means_many_over_medium, w_medium_over_few,
                                    means_medium_over_few}} | None,
         "per_class": {train_count, count, group, w_norm, means_norm, self_duality_cos, nc4}}

    Classes absent from the split are excluded from every mean-based figure (listed in
    ``info.excluded_classes``); classifier-only figures use all K rows of W. Group and
    per-class figures centre the means with the class-balanced mu_G.
    """
    K, d = stats.num_classes, stats.dim
    dev = stats.means.device
    W = _check_w(W, K, d).to(dev)
    present = stats.present
    idx_list = np.nonzero(present)[0].tolist()
    idx = torch.as_tensor(idx_list, dtype=torch.int64, device=dev)
    notes = list(stats.notes)
    excluded = np.nonzero(~present)[0].tolist()
    if excluded:
        notes.append(f"{len(excluded)} classes have no sample in this split and are excluded "
                     f"from the mean-based figures")
    if len(idx_list) < 2:
        raise ValueError(f"neural-collapse metrics need at least 2 classes with samples, got {len(idx_list)}")

    sw, _ = _variant(stats, W, idx, class_balanced=False)
    cb, M_cb_present = _variant(stats, W, idx, class_balanced=True)
    # centred means (class-balanced mu_G) for all K classes; NaN rows for absent ones
    M_cb = torch.full((K, d), float("nan"), dtype=F64, device=dev)
    M_cb[idx] = M_cb_present

    classifier = {
        "nc2_equinorm_w": _float(equinorm(W)),
        "nc2_equiangular_w": _float(equiangularity(W)),
        "nc2_maxangle_w": _float(max_angle(W)),
        "nc2_gram_w": _float(gram_etf_distance(W)),
        "mean_cos_w": mean_pairwise_cosine(W),
        "w_norm_mean": _float(W.norm(dim=1).mean()),
    }

    ncm_res = _resolve_ncm(ncm)
    nc4_block = None
    pc_dis = pc_cnt = None
    if ncm_res is not None:
        nc4_block = {k: ncm_res.get(k) for k in ("nc4", "classifier_acc", "ncm_acc", "num_samples")}
        pc_dis = np.asarray(ncm_res["per_class"]["disagree"], dtype=np.int64)
        pc_cnt = np.asarray(ncm_res["per_class"]["count"], dtype=np.int64)

    # ---- per class
    w_norm = W.norm(dim=1).cpu().numpy()
    m_norm = M_cb.norm(dim=1).cpu().numpy()
    sdual = per_class_self_duality(W, M_cb).cpu().numpy()
    tc = np.asarray(train_counts if train_counts is not None else
                    (stats.train_counts if stats.train_counts is not None else []), dtype=np.int64).reshape(-1)
    have_groups = tc.shape[0] == K
    if train_counts is not None and not have_groups:
        raise ValueError(f"train_counts has {tc.shape[0]} entries, expected {K}")
    groups = group_classes(tc) if have_groups else None
    group_name = [None] * K
    if groups:
        for g, cls in groups.items():
            for c in cls:
                group_name[c] = g
    per_class = {
        "train_count": tc.tolist() if have_groups else None,
        "count": stats.counts.tolist(),
        "group": group_name,
        "w_norm": [_float(v) for v in w_norm],
        "means_norm": [_float(v) for v in m_norm],
        "self_duality_cos": [_float(v) for v in sdual],
        "nc4": ([_float(dd / cc) if cc else None for dd, cc in zip(pc_dis, pc_cnt)]
                if pc_dis is not None else None),
    }

    # ---- groups
    groups_block = None
    if groups is None:
        notes.append("no training counts: the many/medium/few figures are not computed")
    else:
        moments_ok = stats.train_counts is not None and np.array_equal(stats.train_counts, tc)
        if not moments_ok:
            notes.append("the accumulator was not given these training counts: NC1 inside "
                         "groups not computed (pass train_counts to ClassStatsAccumulator)")
        groups_block = {}
        by_name = {}
        for g in GROUP_NAMES:
            cls = groups[g]
            cls_p = [c for c in cls if present[c]]
            by_name[g] = (cls, cls_p)
            entry = {
                "num_classes": len(cls),
                "present_classes": len(cls_p),
                "nc1": None,
                "nc1_class_balanced": None,
                "w_cos_mean": mean_pairwise_cosine(W[cls]),
                "means_cos_mean": mean_pairwise_cosine(M_cb[cls_p]),
                "w_norm_mean": _float(w_norm[cls].mean()) if cls else None,
                "means_norm_mean": _float(m_norm[cls_p].mean()) if cls_p else None,
                "self_duality_cos_mean": _float(sdual[cls_p].mean()) if cls_p else None,
                "nc4": None,
            }
            if moments_ok and g in stats.group_names:
                gi = stats.group_names.index(g)
                entry["nc1"] = _group_nc1(stats, gi, cls_p, False)
                entry["nc1_class_balanced"] = _group_nc1(stats, gi, cls_p, True)
            if pc_dis is not None and cls:
                nn_ = int(pc_cnt[cls].sum())
                entry["nc4"] = int(pc_dis[cls].sum()) / nn_ if nn_ else None
            groups_block[g] = entry
        cross = {}
        for a, bname in (("many", "medium"), ("many", "few"), ("medium", "few")):
            cross[f"{a}-{bname}"] = {
                "w_cos_mean": mean_cross_cosine(W[by_name[a][0]], W[by_name[bname][0]]),
                "means_cos_mean": mean_cross_cosine(M_cb[by_name[a][1]], M_cb[by_name[bname][1]]),
            }
        groups_block["cross"] = cross
        ratios = {}
        for a, bname in (("many", "few"), ("many", "medium"), ("medium", "few")):
            ratios[f"w_{a}_over_{bname}"] = norm_ratio(W[by_name[a][0]], W[by_name[bname][0]])
            ratios[f"means_{a}_over_{bname}"] = norm_ratio(M_cb[by_name[a][1]], M_cb[by_name[bname][1]])
        groups_block["norm_ratios"] = ratios

    info = {
        "num_classes": K,
        "present_classes": len(idx_list),
        "num_samples": stats.num_samples,
        "dim": d,
        "excluded_classes": excluded,
        "has_bias": b is not None,
        "notes": notes,
    }
    return {"info": info, "sample_weighted": sw, "class_balanced": cb, "classifier": classifier,
            "nc4": nc4_block, "groups": groups_block, "per_class": per_class}


@torch.no_grad()
def cosine_matrices(stats: ClassStats, W) -> dict[str, np.ndarray]:
    """K x K float64 cosine matrices for heat maps (saved to .npz, not JSON).

    ``means_cos``[c, c'] = cos(mu_c - mu_G, mu_c' - mu_G) (class-balanced mu_G);
    ``w_cos``[c, c'] = cos(w_c, w_c'); ``cross_cos``[c, c'] = cos(mu_c - mu_G, w_c')
    (its diagonal is the per-class self-duality). Rows/columns of classes absent from the
    split are NaN in the mean-based matrices. Classes are in index order.
    """
    K, d = stats.num_classes, stats.dim
    dev = stats.means.device
    W = _check_w(W, K, d).to(dev)
    present = torch.as_tensor(stats.present, device=dev)
    M = torch.full((K, d), float("nan"), dtype=F64, device=dev)
    mu = stats.means[present]
    M[present] = mu - mu.mean(0)
    return {
        "means_cos": cosine_matrix(M).cpu().numpy(),
        "w_cos": cosine_matrix(W).cpu().numpy(),
        "cross_cos": cosine_matrix(M, W).cpu().numpy(),
    }


# ============================================================ summaries and files
# Flat key figures: name -> path in compute_nc's dict. Used for per-epoch logging
# (metrics.jsonl "nc"), curves and tables.
SUMMARY_KEYS: dict[str, tuple[str, ...]] = {
    "nc1": ("sample_weighted", "nc1"),
    "nc1_cb": ("class_balanced", "nc1"),
    "nc2_equinorm_means": ("sample_weighted", "nc2_equinorm_means"),
    "nc2_equinorm_means_cb": ("class_balanced", "nc2_equinorm_means"),
    "nc2_equinorm_w": ("classifier", "nc2_equinorm_w"),
    "nc2_equiangular_means": ("sample_weighted", "nc2_equiangular_means"),
    "nc2_equiangular_means_cb": ("class_balanced", "nc2_equiangular_means"),
    "nc2_equiangular_w": ("classifier", "nc2_equiangular_w"),
    "nc2_maxangle_means_cb": ("class_balanced", "nc2_maxangle_means"),
    "nc2_maxangle_w": ("classifier", "nc2_maxangle_w"),
    "nc2_gram_means_cb": ("class_balanced", "nc2_gram_means"),
    "nc2_gram_w": ("classifier", "nc2_gram_w"),
    "nc3": ("sample_weighted", "nc3"),
    "nc3_cb": ("class_balanced", "nc3"),
    "nc4": ("nc4", "nc4"),
    "many_w_cos": ("groups", "many", "w_cos_mean"),
    "few_w_cos": ("groups", "few", "w_cos_mean"),
    "many_means_cos": ("groups", "many", "means_cos_mean"),
    "few_means_cos": ("groups", "few", "means_cos_mean"),
    "few_nc1_cb": ("groups", "few", "nc1_class_balanced"),
    "w_norm_ratio_many_few": ("groups", "norm_ratios", "w_many_over_few"),
    "means_norm_ratio_many_few": ("groups", "norm_ratios", "means_many_over_few"),
}


def nc_summary(nc: dict) -> dict[str, Optional[float]]:
    """The flat key figures (``SUMMARY_KEYS``) of a ``compute_nc`` dict; missing -> None.
    A dict that is already flat (has no "sample_weighted") is returned filtered as is."""
    if "sample_weighted" not in nc:
        return {k: nc.get(k) for k in SUMMARY_KEYS if k in nc}
    out = {}
    for name, path in SUMMARY_KEYS.items():
        v: Any = nc
        for p in path:
            v = v.get(p) if isinstance(v, dict) else None
        out[name] = v if isinstance(v, (int, float)) else None
    return out


def save_nc(run_dir, nc_by_split: dict[str, dict], cos_by_split: Optional[dict[str, dict]] = None) -> Path:
    """Write RUN_DIR/nc.json = {split: compute_nc(...)} and RUN_DIR/nc.npz with keys
    "<split>_means_cos", "<split>_w_cos", "<split>_cross_cos" (from ``cosine_matrices``).
    Returns the path of nc.json."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "nc.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(nc_by_split, indent=1, allow_nan=False))
    tmp.replace(path)
    if cos_by_split:
        arrays = {f"{split}_{k}": np.asarray(v) for split, mats in cos_by_split.items() for k, v in mats.items()}
        tmpz = run_dir / "nc.tmp.npz"
        np.savez_compressed(tmpz, **arrays)
        tmpz.replace(run_dir / "nc.npz")
    return path

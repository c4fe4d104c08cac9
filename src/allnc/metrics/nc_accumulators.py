"""Neural-collapse statistics streamed over a split: ``ClassStatsAccumulator`` (pass 1:
per-class counts, means and within-class scatter -> :class:`ClassStats`) and
``NCMAccumulator`` (pass 2: NC4, classifier and nearest-class-mean accuracy), each with
its all-reduce over data-parallel ranks (``allnc.dist``).

Design of the first pass (``ClassStatsAccumulator``): ONE pass over the data, memory
O(K d + G d^2) with G <= 3 groups, never O(N d). It keeps per-class counts and sums and,
per many/medium/few group (``allnc.data.longtail.groups`` of the TRAINING counts), the
second moment sum_i (h_i - c)(h_i - c)^T and (when the split's class counts are known up
front) the class-weighted one sum_i (1/n_{y_i}) (h_i - c)(h_i - c)^T, all in float64. The
within-class scatter follows from
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

import warnings
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch

from ..data.longtail import groups as longtail_groups
from ..dist import all_reduce_sum, is_dist
from .accuracy import GROUP_NAMES
from .nc_formulas import F64, as_f64, check_classifier

__all__ = ["ClassStats", "ClassStatsAccumulator", "NCMAccumulator"]


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
            groups = longtail_groups(tc)
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
        mu = as_f64(mu)
        self.device = torch.device(device) if device is not None else mu.device
        mu = mu.to(self.device)
        K, d = mu.shape
        W = check_classifier(W, K, d).to(self.device)
        self.num_classes, self.dim = K, d
        valid = ~torch.isnan(mu).any(dim=1)
        if not bool(valid.any()):
            raise ValueError("NCMAccumulator: no class has a mean")
        self.means = torch.where(valid[:, None], mu, torch.zeros_like(mu))
        self.mu_sq = (self.means ** 2).sum(1)
        self.mu_sq[~valid] = float("inf")
        self.W = W
        self.b = as_f64(b, self.device).reshape(-1) if b is not None else torch.zeros(K, dtype=F64, device=self.device)
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

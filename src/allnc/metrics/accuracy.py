"""Top-1 accuracy, per-class accuracy, many/medium/few groups and the confusion matrix.

Groups follow the long-tailed convention (docs/reference.md): a class is *many* with more
than 100 TRAINING images, *few* with fewer than 20, *medium* otherwise (20..100). Groups
are always derived from the training counts, never from class-index ranges. A group's
accuracy is the mean of the per-class accuracies of its classes (classes with no test
sample are left out of that mean); an empty group is reported as ``None``, never as 0.

Streaming: ``AccuracyAccumulator`` keeps only per-class counters (and, optionally, the
K x K confusion matrix), so it can be fed batch after batch on CPU or GPU and summed
across data-parallel ranks with :func:`allnc.dist.all_reduce_sum`.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from ..data.longtail import FEW_BELOW, GROUP_NAMES, MANY_ABOVE, group_of, groups  # noqa: F401
from ..dist import all_reduce_sum

# Above this many classes the confusion matrix is off unless asked for (K*K int64 and a
# K*K JSON list: 8 MB / a few MB at K = 1000, 530 MB at iNaturalist's 8142 classes).
CONFUSION_AUTO_MAX_CLASSES = 1000

# the group convention has one home: the long-tail module
group_classes = groups


def _mean_or_none(values: list) -> Optional[float]:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


class AccuracyAccumulator:
    """Streaming classification accuracy.

    ``update(logits_or_preds, targets)`` takes logits (B x K, argmax is taken) or
    predicted labels (B); any device, any dtype. ``all_reduce()`` sums the counters over
    data-parallel ranks (call it once, after the last update, on every rank).
    ``result(train_counts)`` gives a JSON-ready dict.

    ``confusion``: keep the K x K confusion matrix (rows = true class, columns =
    prediction). ``None`` = on for K <= 1000.
    ``device``: where the counters live; ``None`` = the device of the first update
    (give it explicitly when a rank may see no batch before ``all_reduce``).
    """

    def __init__(self, num_classes: int, confusion: Optional[bool] = None,
                 device: Optional[torch.device | str] = None):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.keep_confusion = (num_classes <= CONFUSION_AUTO_MAX_CLASSES
                               if confusion is None else bool(confusion))
        self._reduced = False
        self.correct: Optional[torch.Tensor] = None
        self.total: Optional[torch.Tensor] = None
        self.confusion: Optional[torch.Tensor] = None
        if device is not None:
            self._alloc(torch.device(device))

    def _alloc(self, device: torch.device) -> None:
        K = self.num_classes
        self.correct = torch.zeros(K, dtype=torch.int64, device=device)
        self.total = torch.zeros(K, dtype=torch.int64, device=device)
        if self.keep_confusion:
            self.confusion = torch.zeros(K * K, dtype=torch.int64, device=device)

    @torch.no_grad()
    def update(self, logits_or_preds: torch.Tensor, targets: torch.Tensor) -> None:
        if self._reduced:
            raise RuntimeError("AccuracyAccumulator.update after all_reduce(): counts would be "
                               "summed twice; use a new accumulator")
        x = torch.as_tensor(logits_or_preds).detach()
        if x.dim() == 2:
            if x.shape[1] != self.num_classes:
                raise ValueError(f"logits have {x.shape[1]} columns, expected {self.num_classes}")
            preds = x.argmax(dim=1)
        elif x.dim() == 1:
            preds = x
        else:
            raise ValueError(f"expected logits (B x K) or predictions (B), got shape {tuple(x.shape)}")
        if self.correct is None:
            self._alloc(preds.device)
        dev = self.correct.device
        preds = preds.to(dev, torch.int64).reshape(-1)
        t = torch.as_tensor(targets).detach().to(dev, torch.int64).reshape(-1)
        if preds.numel() != t.numel():
            raise ValueError(f"{preds.numel()} predictions for {t.numel()} targets")
        if t.numel() == 0:
            return
        K = self.num_classes
        lo, hi = int(torch.minimum(t.min(), preds.min())), int(torch.maximum(t.max(), preds.max()))
        if lo < 0 or hi >= K:
            raise ValueError(f"labels/predictions must lie in [0, {K}), got range [{lo}, {hi}]")
        self.total += torch.bincount(t, minlength=K)
        self.correct += torch.bincount(t[preds == t], minlength=K)
        if self.confusion is not None:
            self.confusion += torch.bincount(t * K + preds, minlength=K * K)

    def all_reduce(self) -> None:
        """Sum the counters over ranks (identity in one process). Idempotent."""
        if self._reduced:
            return
        if self.correct is None:
            self._alloc(torch.device("cpu"))
        tensors = [self.correct, self.total] + ([self.confusion] if self.confusion is not None else [])
        all_reduce_sum(*tensors)
        self._reduced = True

    def result(self, train_counts: Optional[Sequence[int]] = None) -> dict:
        """JSON-ready accuracies, all in percent.

        Keys: ``top1`` (sample-weighted, over all test samples), ``num_samples``,
        ``per_class`` (K values; ``None`` for a class without test samples),
        ``per_class_counts`` (test samples per class), ``class_mean`` (mean of the
        per-class accuracies), ``groups`` {many, medium, few} and ``group_sizes`` (number of
        classes per group) when ``train_counts`` is given (else both ``None``), and
        ``confusion`` (K x K list of ints, rows = true class) or ``None``.
        """
        K = self.num_classes
        if self.correct is None:
            correct = np.zeros(K, dtype=np.int64)
            total = np.zeros(K, dtype=np.int64)
            conf = np.zeros((K, K), dtype=np.int64) if self.keep_confusion else None
        else:
            correct = self.correct.cpu().numpy()
            total = self.total.cpu().numpy()
            conf = self.confusion.cpu().numpy().reshape(K, K) if self.confusion is not None else None
        n = int(total.sum())
        per_class = [100.0 * int(c) / int(t) if t > 0 else None for c, t in zip(correct, total)]
        out = {
            "top1": 100.0 * int(correct.sum()) / n if n > 0 else None,
            "num_samples": n,
            "per_class": per_class,
            "per_class_counts": [int(t) for t in total],
            "class_mean": _mean_or_none(per_class),
            "groups": None,
            "group_sizes": None,
            "confusion": conf.tolist() if conf is not None else None,
        }
        if train_counts is not None:
            tc = np.asarray(train_counts).reshape(-1)
            if tc.shape[0] != K:
                raise ValueError(f"train_counts has {tc.shape[0]} entries, expected {K}")
            groups = group_classes(tc)
            out["groups"] = {g: _mean_or_none([per_class[c] for c in cls]) for g, cls in groups.items()}
            out["group_sizes"] = {g: len(cls) for g, cls in groups.items()}
        return out


# --------------------------------------------------------------- where the errors go
def _rows(confusion, train_counts) -> tuple[np.ndarray, np.ndarray]:
    conf = np.asarray(confusion, dtype=np.float64)
    tc = np.asarray(train_counts).reshape(-1)
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1] or conf.shape[0] != tc.shape[0]:
        raise ValueError(f"confusion must be K x K with K = {tc.shape[0]} (the train counts), got {conf.shape}")
    return conf, tc


def group_confusion(confusion, train_counts) -> dict:
    """Where each group's test images go: ``shares[g][h]``, in percent, is the mean over the
    classes of true group ``g`` (those with test images) of the share of a class's test
    images predicted as a class of group ``h`` (class-balanced, like the group accuracies).
    Each row sums to 100; ``None`` for an empty group. ``counts[g][h]`` are the image counts."""
    conf, tc = _rows(confusion, train_counts)
    grp = group_classes(tc)
    col = {h: conf[:, idx].sum(axis=1) if len(idx) else np.zeros(len(tc)) for h, idx in grp.items()}
    n = conf.sum(axis=1)
    shares: dict = {}
    counts: dict = {}
    for g, idx in grp.items():
        tested = [c for c in idx if n[c] > 0]
        shares[g] = ({h: float(np.mean([100.0 * col[h][c] / n[c] for c in tested])) for h in GROUP_NAMES}
                     if tested else None)
        counts[g] = {h: int(col[h][idx].sum()) for h in GROUP_NAMES}
    return {"shares": shares, "counts": counts}


def headward_errors(confusion, train_counts) -> dict:
    """Of the misclassified test images, the share predicted as a class with more training
    images than their own ("head-ward"), in percent: ``all`` over every error, per group
    (errors of the group's classes), per class (``None`` for a class with no error).

    ``uniform`` is the same share if each class's errors were spread evenly over the other
    classes (a class with r strictly larger classes out of K sends r / (K - 1) of them
    head-ward), weighted by the same errors: the figure to compare ``all`` with. Ties count
    as not head-ward."""
    conf, tc = _rows(confusion, train_counts)
    K = len(tc)
    larger = tc[None, :] > tc[:, None]  # [c, j]: class j has more training images than c
    errors = conf.sum(axis=1) - np.diag(conf)
    head = (conf * larger).sum(axis=1)
    even = larger.sum(axis=1) / max(K - 1, 1)

    def share(idx) -> Optional[float]:
        e = errors[idx].sum()
        return float(100.0 * head[idx].sum() / e) if e > 0 else None

    def uniform(idx) -> Optional[float]:
        e = errors[idx].sum()
        return float(100.0 * (errors[idx] * even[idx]).sum() / e) if e > 0 else None

    grp = group_classes(tc)
    every = np.arange(K)
    return {"all": share(every), "uniform": uniform(every), "errors": int(errors.sum()),
            "groups": {g: share(np.asarray(idx, dtype=int)) for g, idx in grp.items()},
            "per_class": [float(100.0 * head[c] / errors[c]) if errors[c] > 0 else None for c in range(K)]}


def error_summary(confusion, train_counts) -> dict:
    """``headward_errors`` as results files keep it: the error count, the head-ward share,
    its even-spread value and the by-group shares."""
    hw = headward_errors(confusion, train_counts)
    return {"errors": hw["errors"], "headward": hw["all"], "headward_if_even": hw["uniform"],
            "headward_by_group": hw["groups"]}

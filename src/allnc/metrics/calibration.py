"""Calibration: the expected calibration error (ECE) and its reliability bins.

A prediction's confidence is its largest softmax probability. The confidences are put in
``num_bins`` equal-width bins (lo, hi] of [0, 1] (Guo et al. ICML 2017; 15 bins, as MiSLAS
reports); with n_b predictions in bin b, their mean confidence conf_b and their accuracy acc_b,

    ECE = sum_b (n_b / N) |acc_b - conf_b|,

in percent: 0 for a perfectly calibrated model. ``CalibrationAccumulator`` streams over
batches (three counters per bin) and sums over data-parallel ranks.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..dist import all_reduce_sum

NUM_BINS = 15


def bin_index(confidence: torch.Tensor, num_bins: int = NUM_BINS) -> torch.Tensor:
    """The bin (lo, hi] of each confidence: ceil(c * B) - 1, with 0 in the first bin."""
    return (torch.ceil(confidence.double() * num_bins) - 1).clamp_(0, num_bins - 1).long()


class CalibrationAccumulator:
    """``update(probabilities, targets)`` with B x K probabilities (rows sum to 1);
    ``result()`` gives ``ece`` (percent) and the ``reliability`` bins."""

    def __init__(self, num_bins: int = NUM_BINS, device: Optional[torch.device | str] = None):
        if num_bins < 1:
            raise ValueError(f"num_bins must be >= 1, got {num_bins}")
        self.num_bins = int(num_bins)
        # 3 x B: count, sum of confidences, correct; on ``device`` from the start when given (a
        # rank that sees no batch must still sum a tensor on the device its peers use)
        self.stats: Optional[torch.Tensor] = None if device is None else self._zeros(device)

    def _zeros(self, device=None) -> torch.Tensor:
        return torch.zeros(3, self.num_bins, dtype=torch.float64, device=device)

    @torch.no_grad()
    def update(self, probs: torch.Tensor, targets: torch.Tensor) -> None:
        conf, pred = probs.detach().float().max(dim=1)
        t = targets.to(pred.device).reshape(-1)
        if self.stats is None:
            self.stats = self._zeros(conf.device)
        b = bin_index(conf, self.num_bins)
        self.stats[0].index_add_(0, b, torch.ones_like(conf, dtype=torch.float64))
        self.stats[1].index_add_(0, b, conf.double())
        self.stats[2].index_add_(0, b, (pred == t).double())

    def all_reduce(self) -> None:
        if self.stats is None:
            self.stats = self._zeros()
        all_reduce_sum(self.stats)

    def result(self) -> dict:
        s = (self.stats if self.stats is not None else self._zeros()).cpu()
        n, conf, correct = s[0], s[1], s[2]
        total = float(n.sum())
        bins = []
        for b in range(self.num_bins):
            k = float(n[b])
            bins.append({"lo": b / self.num_bins, "hi": (b + 1) / self.num_bins, "count": int(k),
                         "confidence": float(conf[b]) / k if k else None, "accuracy": float(correct[b]) / k if k else None})
        ece = float((conf - correct).abs().sum()) / total * 100 if total else None
        return {"ece": ece, "num_bins": self.num_bins, "reliability": bins}


def expected_calibration_error(probs: torch.Tensor, targets: torch.Tensor, num_bins: int = NUM_BINS) -> float:
    """ECE in percent of one set of predictions (the accumulator in one call)."""
    acc = CalibrationAccumulator(num_bins)
    acc.update(probs, targets)
    return acc.result()["ece"]

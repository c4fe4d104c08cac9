"""Evaluation: accuracy of the last epoch, and neural-collapse statistics of a split."""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from ..metrics import AccuracyAccumulator, ClassStatsAccumulator, NCMAccumulator, compute_nc, cosine_matrices
from .loaders import iter_eval


def autocast_ctx(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _prep(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


@torch.no_grad()
def evaluate_accuracy(method, cfg, bundle, choice, device, amp=False, channels_last=False) -> dict:
    was = method.training
    method.eval()
    acc = AccuracyAccumulator(bundle.num_classes)
    for x, y in iter_eval(cfg, bundle, "test", choice, device):
        with autocast_ctx(device, amp):
            logits = method(_prep(x, channels_last))
        acc.update(logits.float(), y)
    acc.all_reduce()
    method.train(was)
    return acc.result(np.asarray(bundle.class_counts))


@torch.no_grad()
def neural_collapse(method, cfg, bundle, choice, device, splits=("train", "test"), amp=False,
                    channels_last=False, max_samples: int = 0) -> tuple[dict, dict]:
    """Two passes per split (class statistics, then the nearest-class-mean check) over the
    inference features, without augmentation. Returns (nc dict, cosine matrices)."""
    was = method.training
    method.eval()
    W, b = method.classifier_weight()
    W = W.detach().float()
    b = None if b is None else b.detach().float()
    out, mats = {}, {}
    for split in splits:
        stats = None

        def batches():
            seen = 0
            for x, y in iter_eval(cfg, bundle, split, choice, device):
                if max_samples and seen >= max_samples:
                    return
                with autocast_ctx(device, amp):
                    h, _ = method.features(_prep(x, channels_last))
                seen += len(y)
                yield h.float(), y

        for h, y in batches():
            if stats is None:
                stats = ClassStatsAccumulator(bundle.num_classes, h.shape[1], device=h.device)
            stats.update(h, y)
        stats.all_reduce()
        ncm = NCMAccumulator(stats.means(), W, b)
        for h, y in batches():
            ncm.update(h, y)
        ncm.all_reduce()
        out[split] = compute_nc(stats, W, b, np.asarray(bundle.class_counts), ncm=ncm)
        for k, v in cosine_matrices(stats, W).items():
            mats[f"{split}_{k}"] = v
    method.train(was)
    return out, mats

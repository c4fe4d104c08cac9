"""Evaluation of a run context: accuracy on a split (the last epoch's model), and the
neural-collapse statistics of a split's features and the classifier."""
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
def evaluate_accuracy(ctx, split: str = "test") -> dict:
    """Top-1, many/medium/few (groups from the training counts) and per-class accuracy of
    ``ctx.method`` on ``split`` ("test", or "val" where the data have a validation split)."""
    method, bundle = ctx.method, ctx.bundle
    was = method.training
    method.eval()
    acc = AccuracyAccumulator(bundle.num_classes)
    for x, y in iter_eval(ctx.cfg, bundle, split, ctx.choice, ctx.device):
        with autocast_ctx(ctx.device, ctx.amp):
            logits = method(_prep(x, ctx.channels_last))
        acc.update(logits.float(), y)
    acc.all_reduce()
    method.train(was)
    return acc.result(np.asarray(bundle.class_counts))


@torch.no_grad()
def neural_collapse(ctx, splits=("train", "test"), max_samples: int = 0) -> tuple[dict, dict]:
    """Neural-collapse metrics of the inference features (no augmentation) and the
    classifier that makes the predictions: one pass for class statistics, one for the
    nearest-class-mean check. Returns ({split: compute_nc}, {split: cosine matrices})."""
    method, bundle, device = ctx.method, ctx.bundle, ctx.device
    was = method.training
    method.eval()
    W, b = method.classifier_weight()
    W = W.detach().float()
    b = None if b is None else b.detach().float()
    train_counts = np.asarray(bundle.class_counts)
    out, mats = {}, {}
    for split in splits:
        split_counts = np.bincount(getattr(bundle, split).targets, minlength=bundle.num_classes)

        def batches():
            seen = 0
            for x, y in iter_eval(ctx.cfg, bundle, split, ctx.choice, device):
                if max_samples and seen >= max_samples:
                    return
                with autocast_ctx(device, ctx.amp):
                    h, _ = method.features(_prep(x, ctx.channels_last))
                seen += len(y)
                yield h.float(), y

        acc = ClassStatsAccumulator(bundle.num_classes, W.shape[1], device=device,
                                    class_counts=None if max_samples else split_counts, train_counts=train_counts)
        for h, y in batches():
            acc.update(h, y)
        acc.all_reduce()
        stats = acc.result()
        ncm = NCMAccumulator(stats, W, b)
        for h, y in batches():
            ncm.update(h, y)
        ncm.all_reduce()
        out[split] = compute_nc(stats, W, b, train_counts, ncm=ncm)
        mats[split] = cosine_matrices(stats, W)
    method.train(was)
    return out, mats

"""Evaluation of a run context: accuracy on a split (the last epoch's model), and the
neural-collapse statistics of a split's features and the classifier."""
from __future__ import annotations

import contextlib
import dataclasses

import time

import numpy as np
import torch

from ..metrics import (AccuracyAccumulator, CalibrationAccumulator, ClassStatsAccumulator, NCMAccumulator, compute_nc,
                       cosine_matrices)
from ..errors import ConfigError
from .loaders import PipelineChoice, iter_eval


def autocast_ctx(device: torch.device, amp: bool):
    """bf16 autocast on ``device`` when ``amp`` (the GPU's default; on the CPU only when asked
    for, with train.amp=bf16), else nothing."""
    if amp and device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _prep(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


@torch.no_grad()
def evaluate_accuracy(ctx, split: str = "test") -> dict:
    """Top-1, many/medium/few (groups from the training counts) and per-class accuracy of
    ``ctx.method`` on ``split`` ("test", or "val" where the data have a validation split),
    and its calibration: ``ece`` (percent, 15 bins) and the ``reliability`` bins of the
    softmax of the logits in the units the loss trained (``loss_logit_scale``: LDAM's s)."""
    method, bundle = ctx.method, ctx.bundle
    was = method.training
    method.eval()
    acc = AccuracyAccumulator(bundle.num_classes)
    cal = CalibrationAccumulator(device=ctx.device)
    scale = float(method.loss_logit_scale())
    for x, y in iter_eval(ctx.cfg, bundle, split, ctx.choice, ctx.device):
        with autocast_ctx(ctx.device, ctx.amp):
            logits = method(_prep(x, ctx.channels_last))
        acc.update(logits.float(), y)
        cal.update(torch.softmax(logits.float() * scale, dim=1), y)
    acc.all_reduce()
    cal.all_reduce()
    method.train(was)
    return {**acc.result(np.asarray(bundle.class_counts)), **cal.result()}


def stratified_indices(targets: np.ndarray, max_samples: int, num_classes: int) -> np.ndarray:
    """At most ``max_samples`` indices with every class present and each class's share of the
    split kept (rounded, at least one image each): the first images of each class in the
    split's order, so the subsample is deterministic. Sorted."""
    targets = np.asarray(targets)
    present = [c for c in range(num_classes) if (targets == c).any()]
    if max_samples < len(present):
        raise ConfigError(f"max samples {max_samples} is below the {len(present)} classes of the split; give at least "
                          f"{len(present)} (or 0 for all)")
    if max_samples >= len(targets):
        return np.arange(len(targets))
    counts = np.bincount(targets, minlength=num_classes)
    quota = np.maximum(1, np.floor(counts * max_samples / len(targets))).astype(int) * (counts > 0)
    # hand out what rounding down left, largest remainders first, never past a class's size
    rest = max_samples - int(quota.sum())
    frac = counts * max_samples / len(targets) - np.floor(counts * max_samples / len(targets))
    for c in np.argsort(-frac, kind="stable"):
        if rest <= 0:
            break
        if quota[c] < counts[c]:
            quota[c] += 1
            rest -= 1
    keep = np.concatenate([np.flatnonzero(targets == c)[: quota[c]] for c in range(num_classes)])
    return np.sort(keep)


@torch.no_grad()
def neural_collapse(ctx, splits=("train", "test"), max_samples: int = 0, log=None, every_s: float = 10.0,
                    clock=time.monotonic) -> tuple[dict, dict]:
    """Neural-collapse metrics of the inference features (no augmentation) and the
    classifier that makes the predictions: one pass for class statistics, one for the
    nearest-class-mean check. ``max_samples`` > 0 measures a class-stratified subsample of
    each split (``stratified_indices``). ``log(line)``: where the work is, at the end of each
    pass and at least every ``every_s`` seconds inside one. Returns ({split: compute_nc},
    {split: cosine matrices})."""
    method, bundle, device = ctx.method, ctx.bundle, ctx.device
    was = method.training
    method.eval()
    W, b = method.classifier_weight()
    W = W.detach().float()
    b = None if b is None else b.detach().float()
    train_counts = np.asarray(bundle.class_counts)
    out, mats = {}, {}

    def subsample(split):
        data, choice = bundle, ctx.choice
        if max_samples:
            keep = stratified_indices(getattr(bundle, split).targets, max_samples, bundle.num_classes)
            data = dataclasses.replace(bundle, **{split: getattr(bundle, split).subset(keep)})
            choice = PipelineChoice(ctx.choice.fast, ctx.choice.reason)  # its own device copy of the subsample
        return data, choice

    def batches(split, data, choice, what):
        n_split = len(getattr(data, split).targets)
        t0 = last = clock()
        seen = 0
        for x, y in iter_eval(ctx.cfg, data, split, choice, device):
            with autocast_ctx(device, ctx.amp):
                h, _ = method.features(_prep(x, ctx.channels_last))
            seen += len(y)
            now = clock()
            if log is not None and now - last >= every_s:
                last = now
                log(f"{what}: {seen}/{n_split} images, {now - t0:.0f} s")
            yield h.float(), y
        if log is not None:
            log(f"{what}: {seen}/{n_split} images, done in {clock() - t0:.1f} s")

    def class_stats(split, data, choice, what):
        split_counts = np.bincount(getattr(data, split).targets, minlength=bundle.num_classes)
        acc = ClassStatsAccumulator(bundle.num_classes, W.shape[1], device=device, class_counts=split_counts,
                                    train_counts=train_counts)
        for h, y in batches(split, data, choice, what):
            acc.update(h, y)
        acc.all_reduce()
        return acc.result()

    # the nearest-class-mean rule of every split uses the TRAINING class means (the NCM
    # classifier of Papyan et al.): the training split goes first, or is read for them alone
    train_stats = None
    for split in sorted(splits, key=lambda s: s != "train"):
        data, choice = subsample(split)
        stats = class_stats(split, data, choice, f"nc {split}: pass 1/2 (class statistics)")
        if split == "train":
            train_stats = stats
        elif train_stats is None:
            tdata, tchoice = subsample("train")
            train_stats = class_stats("train", tdata, tchoice, "nc train: the training class means for the NCM rule")
        ncm = NCMAccumulator(train_stats, W, b)
        for h, y in batches(split, data, choice, f"nc {split}: pass 2/2 (nearest class mean)"):
            ncm.update(h, y)
        ncm.all_reduce()
        out[split] = compute_nc(stats, W, b, train_counts, ncm=ncm)
        mats[split] = cosine_matrices(stats, W)
    out, mats = {k: out[k] for k in splits}, {k: mats[k] for k in splits}
    method.train(was)
    return out, mats

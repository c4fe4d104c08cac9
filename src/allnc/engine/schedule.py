"""Learning-rate schedules as pure functions of (epoch, step): nothing to save or restore."""
from __future__ import annotations

import math


def lr_at(base_lr: float, epoch: int, step: int, steps_per_epoch: int, epochs: int, warmup_epochs: int,
          schedule: str, milestones=(160, 180), decay: float = 0.01) -> float:
    """Linear warm-up over ``warmup_epochs`` (per step), then:

    step: multiply by ``decay`` at each milestone epoch (0.01 then 0.0001 of the base
    for milestones 160, 180 and decay 0.01: the CIFAR-LT protocol); cosine: half cosine
    from the end of warm-up, read at the start of each step, so that it would reach zero at
    the end of the last step (the last step itself runs at a small positive rate:
    base * (1 - cos(pi / steps_after_warmup)) / 2); constant: the base rate.
    """
    t = epoch + step / steps_per_epoch
    if warmup_epochs > 0 and t < warmup_epochs:
        return base_lr * (epoch * steps_per_epoch + step + 1) / (warmup_epochs * steps_per_epoch)
    if schedule == "step":
        k = sum(1 for m in milestones if epoch >= m)
        return base_lr * decay**k
    if schedule == "cosine":
        span = max(epochs - warmup_epochs, 1e-9)
        return 0.5 * base_lr * (1 + math.cos(math.pi * min((t - warmup_epochs) / span, 1.0)))
    return base_lr

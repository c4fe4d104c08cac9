"""What a person sees of a run: the progress bar, the epoch lines, TensorBoard."""
from __future__ import annotations

import sys
import time
from pathlib import Path


def epoch_line(rec: dict, epochs: int) -> str:
    s = f"epoch {rec['epoch']:>3}/{epochs} loss {rec['loss']:.4f} lr {rec['lr']:.4f} {rec['time_s']:.1f}s"
    for split in ("val", "test"):
        if f"{split}_top1" in rec:
            g = rec[f"{split}_groups"]
            s += f" | {split} top1 {rec[f'{split}_top1']:.2f}" + "".join(
                f" {k} {'-' if g[k] is None else f'{g[k]:.1f}'}" for k in ("many", "medium", "few"))
    return s


class NullBar:
    enabled = False

    def update(self, n):
        pass

    def set_postfix_str(self, s):
        pass

    def write(self, s):
        pass

    def close(self):
        pass


def _hms(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h else f"{rem // 60}:{rem % 60:02d}"


class Heartbeat:
    """Where there is no bar (logs, pipes, grid runs): a line at least every ``every_s``
    seconds inside an epoch with the step, the images per second and the time left."""

    def __init__(self, log, epochs: int, start_epoch: int, steps: int, images_per_step: int, every_s: float = 30.0,
                 clock=time.monotonic):
        self.log, self.epochs, self.steps, self.images_per_step = log, epochs, steps, images_per_step
        self.every_s, self.clock = every_s, clock
        self.t0 = self.last = clock()
        self.done = 0  # steps since the start of this process
        self.total = (epochs - start_epoch) * steps

    def tick(self, epoch: int, step: int, steps: int) -> None:
        self.done += 1
        now = self.clock()
        if now - self.last < self.every_s:
            return
        self.last = now
        rate = self.done / max(now - self.t0, 1e-9)
        eta = (self.total - self.done) / max(rate, 1e-9)
        self.log(f"epoch {epoch + 1}/{self.epochs} step {step + 1}/{steps}: {rate * self.images_per_step:.0f} images/s, "
                 f"{_hms(eta)} left")


def progress_bar(total: int, enabled: bool):
    """A tqdm bar on a terminal, else a bar that does nothing."""
    if not enabled or total <= 0:
        return NullBar()
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="step", dynamic_ncols=True, mininterval=0.5, file=sys.stderr)
    bar.enabled = True
    return bar


def tensorboard(path: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency, but keep training if it is broken
        return None
    return SummaryWriter(str(path))

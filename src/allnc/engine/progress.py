"""What a person sees of a run: the progress bar, the epoch lines, TensorBoard."""
from __future__ import annotations

import sys
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

    def close(self):
        pass


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

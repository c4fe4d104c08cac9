"""``FastLoader``: batches of a device-resident split in the sampler's order, augmented on
the device with reproducible per-step generators; and ``fast_path_applicable``, whether the
fast path can train on given data.
"""
from __future__ import annotations

from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch

from .augment import FAST_PRESETS, BatchAugment, slice_params
from .images import DeviceImages


def mix_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from a tuple of ints (NumPy's SeedSequence): every stream that
    must be the same on every process (a batch's augmentation, PaCo's shuffle) seeds from it."""
    state = np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def _rank_indices(sampler: Any, epoch: int) -> torch.Tensor:
    """This rank's sample order for ``epoch``, as the sampler itself defines it (its
    ``rank_indices(epoch)``, else its ``__iter__`` after ``set_epoch``)."""
    fn = getattr(sampler, "rank_indices", None)
    if callable(fn):
        return torch.as_tensor(fn(epoch), dtype=torch.int64).cpu()
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    return torch.as_tensor(list(iter(sampler)), dtype=torch.int64)


class FastLoader:
    """Batches of a device-resident split in the sampler's order, augmented on the device.

    Each step yields ``{"x": float (B, C, H, W) or a list of ``views`` of them, "y": int64
    (B,), "index": int64 (B,)}`` on the images' device, with B = ``batch_size`` (this rank's
    share; the last partial batch is dropped, so shapes are static). The random choices of
    step s of epoch e come from a device generator seeded from (seed, e, s), drawn for the
    whole global batch (``batch_size * world_size``) and sliced to this rank's chunk: N
    ranks see exactly the augmented samples that one process sees with the same global
    batch, and a resumed run reproduces the same batches. With ``augment=None`` "x" is the
    gathered uint8 batch itself (no augmentation, no normalization).
    """

    def __init__(
        self,
        images: DeviceImages,
        sampler: Any,
        batch_size: int,
        augment: Optional[BatchAugment] | Sequence[Optional[BatchAugment]] = None,
        views: int = 1,
        seed: int = 0,
    ):
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if views < 1:
            raise ValueError("views must be at least 1")
        self.images = images
        self.sampler = sampler
        self.batch_size = int(batch_size)
        self.augment = augment
        self.views = int(views)
        self.seed = int(seed)
        self.epoch = 0
        self.rank = int(getattr(sampler, "rank", 0) or 0)
        self.world_size = int(getattr(sampler, "world_size", 1) or 1)
        gbs = getattr(sampler, "batch_size", None)
        if isinstance(gbs, int) and gbs != self.batch_size * self.world_size:
            raise ValueError(
                f"FastLoader batch_size {batch_size} (per rank) x {self.world_size} ranks does not match the "
                f"sampler's global batch size {gbs}"
            )
        self._gen = torch.Generator(device=images.device)
        # one augmentation for every view, or a list with one per view
        per_view = list(augment) if isinstance(augment, (list, tuple)) else [augment] * self.views
        if len(per_view) != self.views:
            raise ValueError(f"{len(per_view)} augmentations given for {self.views} views")
        self._per_view = per_view

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch to iterate."""
        self.epoch = int(epoch)
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(self.epoch)

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size

    def generator(self, epoch: int, step: int) -> torch.Generator:
        return self._gen.manual_seed(mix_seed(self.seed, epoch, step))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        epoch, bs = self.epoch, self.batch_size
        order = _rank_indices(self.sampler, epoch)
        steps = len(order) // bs
        dev = self.images.device
        batches = order[: steps * bs].view(steps, bs).to(dev)
        c, h, w = self.images.shape
        lo, hi = self.rank * bs, (self.rank + 1) * bs
        gbs = bs * self.world_size
        for step in range(steps):
            index = batches[step]
            xb, yb = self.images.gather(index)
            g = self.generator(epoch, step)
            outs = []
            for aug in self._per_view:
                if aug is None:
                    outs.append(xb)
                    continue
                params = aug.sample_params(gbs, h, w, g)
                outs.append(aug.apply(xb, slice_params(params, lo, hi)))
            yield {"x": outs[0] if self.views == 1 else outs, "y": yb, "index": index}


def fast_path_applicable(bundle: Any, data_cfg: Any, view_presets: Sequence[str] = ()) -> tuple[bool, str]:
    """Whether the fast path can train on this data: the training split is in memory as
    uint8 (small images) and the augment preset (and every extra view's preset) is one this
    module implements."""
    pipeline = getattr(data_cfg, "pipeline", "auto")
    if pipeline == "conventional":
        return False, "data.pipeline=conventional"
    augment = getattr(data_cfg, "augment", "standard")
    for name, p in [("data.augment", augment), *(("a view's preset", v) for v in view_presets)]:
        if p not in FAST_PRESETS:
            return False, f"{name}={p!r} has no batched implementation (one of {', '.join(FAST_PRESETS)})"
    if not getattr(bundle, "small", False):
        return False, "the images are not small enough to keep in memory (large-image data uses the conventional pipeline)"
    for split in ("train", "test"):
        imgs = getattr(getattr(bundle, split, None), "images", None)
        if imgs is None:
            return False, f"the {split} split is not in memory"
        if getattr(imgs, "dtype", None) != np.uint8 or getattr(imgs, "ndim", 0) not in (3, 4):
            return False, f"the {split} split is not a uint8 N x H x W x C array"
    imgs = bundle.train.images
    c = imgs.shape[3] if imgs.ndim == 4 else 1
    if augment == "strong" and c not in (1, 3):
        return False, f"AutoAugment needs 1 or 3 channels, the images have {c}"
    if "sim" in (augment, *view_presets) and c not in (1, 3):
        return False, f"the sim preset (colour jitter) needs 1 or 3 channels, the images have {c}"
    return True, f"{len(imgs)} training images of {imgs.shape[1]}x{imgs.shape[2]}x{c} in memory, augment={augment}"

"""The device-resident split (``DeviceImages``: the whole split as one uint8 tensor on the
device) and ``eval_batches``, its normalized batches in order for evaluation.
"""
from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np
import torch

from .augment import BatchAugment


class DeviceImages:
    """A whole split on the device: ``x`` uint8 (N, C, H, W), ``y`` int64 (N,).

    ``images`` is the Split's uint8 N x H x W x C array (N x H x W is read as one channel).
    With ``channels_last`` (default) the tensor keeps the NHWC layout of the array in memory
    (an N x C x H x W view in torch's channels_last format, no copy); otherwise it is made
    contiguous NCHW.
    """

    def __init__(self, images: np.ndarray, targets: Any, device: Any = "cpu", channels_last: bool = True):
        arr = np.asarray(images)
        if arr.dtype != np.uint8:
            raise TypeError(f"DeviceImages needs uint8 images, got {arr.dtype}")
        if arr.ndim == 3:
            arr = arr[..., None]
        if arr.ndim != 4:
            raise ValueError(f"DeviceImages needs N x H x W x C images, got shape {arr.shape}")
        self.device = torch.device(device)
        x = torch.from_numpy(np.ascontiguousarray(arr)).to(self.device).permute(0, 3, 1, 2)
        self.x = x if channels_last else x.contiguous()
        self.y = torch.as_tensor(np.asarray(targets), dtype=torch.int64).to(self.device)
        if len(self.y) != len(self.x):
            raise ValueError(f"{len(self.x)} images but {len(self.y)} targets")

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.x.shape[1:])  # type: ignore[return-value]

    def gather(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and targets at ``index`` (a device LongTensor); keeps the memory format."""
        return self.x[index], self.y[index]


def eval_batches(
    images: DeviceImages, batch_size: int, mean: Sequence[float], std: Sequence[float]
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(x, y)`` batches of the split in order, normalized only (float32, on the images'
    device; the last batch may be smaller)."""
    n = len(images)
    aug = BatchAugment("none", mean, std)
    for start in range(0, n, batch_size):
        xb, yb = images.x[start : start + batch_size], images.y[start : start + batch_size]
        yield aug.apply(xb, {}), yb

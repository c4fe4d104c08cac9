"""``BatchAugment``: the batched training augmentation of the fast path (``sample_params``
draws every random choice, ``apply`` is deterministic, ``__call__`` does both), and
``FAST_PRESETS``, the augmentation presets it implements.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..augment import PRESETS
from .autoaugment import CIFAR10_POLICY, _policy_tables, _PolicyTables, autoaugment
from .ops import _stats, crop_flip, cutout
from .sim import apply_sim, sample_sim

# The presets of allnc.data.augment.PRESETS that the fast path implements: all but RandAugment
# (the ImageNet-LT classification view of BCL and PaCo; PIL operations) and the colour jitter of
# MiSLAS's and cRT's large-image recipes, which take the conventional path.
FAST_PRESETS = tuple(p for p in PRESETS if p not in ("randaug", "jitter"))


class BatchAugment:
    """Batched per-sample training augmentation, uint8 (B, C, H, W) -> normalized float32.

    - ``none``: normalize only.
    - ``standard``: random crop with ``pad`` zero padding (offsets uniform in 0..2*pad, as
      RandomCrop(size, padding=pad)) and horizontal flip with p = 0.5, then normalize.
    - ``strong``: AutoAugment CIFAR-10 policy per sample on uint8, then crop + flip, then
      normalize, then Cutout (one ``cutout`` px square per sample, 0 = the mean colour;
      ``cutout=0`` disables it). Cutout belongs to the strong preset only. (The
      conventional torchvision pipeline runs AutoAugment after crop + flip; see
      docs/fast_path.md for why the orders agree in distribution up to border details.)
    - ``sim``: SimAugment (BCL's contrastive views, ``allnc.data.augment.sim_ops``) on float
      images in [0, 1]: random resized crop (scale 0.08-1, bilinear) + flip, ColorJitter(0.4,
      0.4, 0.4, 0.1) in a random order with p = 0.8, greyscale with p = 0.2 (1 channel:
      brightness and contrast only), then normalize (``allnc.data.fast.sim``).

    ``params = sample_params(n, h, w, generator)`` draws every random choice (a dict of
    per-sample tensors that can be sliced along dim 0); ``apply(x, params)`` is
    deterministic; ``__call__(x, generator)`` does both.
    """

    def __init__(
        self,
        preset: str = "standard",
        mean: Sequence[float] = (0.5,),
        std: Sequence[float] = (0.5,),
        pad: int = 4,
        cutout: int = 16,
        flip: bool = True,
    ):
        if preset not in FAST_PRESETS:
            raise ValueError(f"augment preset {preset!r} is not one of: {', '.join(FAST_PRESETS)}")
        self.preset = preset
        self.mean = [float(v) for v in mean]
        self.std = [float(v) for v in std]
        self.pad = int(pad) if preset in ("standard", "strong") else 0
        self.flip = bool(flip) and preset != "none"
        self.cutout = int(cutout) if preset == "strong" else 0
        self._cache: dict = {}

    def __repr__(self) -> str:
        return f"BatchAugment(preset={self.preset!r}, pad={self.pad}, flip={self.flip}, cutout={self.cutout})"

    def _tables(self, h: int, w: int, device: torch.device) -> _PolicyTables:
        key = ("aa", h, w, str(device))
        if key not in self._cache:
            self._cache[key] = _policy_tables(CIFAR10_POLICY, h, w, device)
        return self._cache[key]

    def _norm(self, c: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = ("norm", c, str(device))
        if key not in self._cache:
            m, s = _stats(self.mean, self.std, c, device)
            self._cache[key] = (1.0 / (255.0 * s), -m / s)
        return self._cache[key]

    def sample_params(self, n: int, h: int, w: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Every random choice of a batch of ``n`` images of size (h, w), in a fixed order."""
        dev = generator.device
        g = generator
        if self.preset == "sim":
            return sample_sim(n, h, w, g, flip=self.flip)
        p: dict[str, torch.Tensor] = {}
        if self.preset == "strong":
            p["policy"] = torch.randint(len(CIFAR10_POLICY), (n,), generator=g, device=dev)
            p["u"] = torch.rand((n, 2), generator=g, device=dev)
            p["sign"] = torch.randint(2, (n, 2), generator=g, device=dev)
        if self.pad > 0:
            p["offset"] = torch.randint(2 * self.pad + 1, (n, 2), generator=g, device=dev)
        if self.flip:
            p["flip"] = torch.rand((n,), generator=g, device=dev) < 0.5
        if self.cutout > 0:
            cy = torch.randint(h, (n, 1), generator=g, device=dev)
            cx = torch.randint(w, (n, 1), generator=g, device=dev)
            p["cutout"] = torch.cat([cy, cx], dim=1)
        return p

    def apply(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        if x.dtype != torch.uint8 or x.dim() != 4:
            raise TypeError(f"BatchAugment needs a uint8 (B, C, H, W) batch, got {x.dtype} {tuple(x.shape)}")
        b, c, h, w = x.shape
        if self.preset == "sim":
            scale, shift = self._norm(c, x.device)
            return apply_sim(x.float().div_(255.0), params) * (scale * 255.0) + shift
        strong = self.preset == "strong"
        if strong:
            x = autoaugment(x, params["policy"], params["u"], params["sign"], self._tables(h, w, x.device))
        if self.pad > 0 or self.flip:
            offsets = params["offset"] if self.pad > 0 else torch.zeros(b, 2, dtype=torch.int64, device=x.device)
            x = crop_flip(x, offsets, params.get("flip"), self.pad)
        scale, shift = self._norm(c, x.device)
        y = x.float() * scale + shift
        if self.cutout > 0:
            y = cutout(y, params["cutout"], self.cutout)
        return y

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.apply(x, self.sample_params(x.shape[0], x.shape[2], x.shape[3], generator))


def slice_params(params: dict[str, torch.Tensor], start: int, stop: int) -> dict[str, torch.Tensor]:
    return {k: v[start:stop] for k, v in params.items()}

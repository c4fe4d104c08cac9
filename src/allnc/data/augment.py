"""Augmentation presets (torchvision transforms) and the Cutout and multi-view helpers.

Small images (CIFAR, Fashion-MNIST, small image folders), training:

* ``standard``: RandomCrop(size, padding=4) + RandomHorizontalFlip + ToTensor + Normalize;
* ``strong``: standard + AutoAugment (CIFAR-10 policy) before ToTensor, and Cutout
  (``data.cutout`` px, one square) *after* Normalize, as in the original Cutout code, so
  the cut square holds 0 = the dataset mean colour;
* ``none``: ToTensor + Normalize;
* ``randaug``: standard + RandAugment (``allnc.data.randaugment``) before ToTensor;
* ``jitter``: standard + colour jitter (brightness, contrast, saturation 0.4; hue 0) before
  ToTensor.

Large images, training: RandomResizedCrop(image_size) + RandomHorizontalFlip (``strong``
adds AutoAugment, ImageNet policy; ``none`` is the test transform). ``randaug`` is the
classification view of BCL's and PaCo's released ImageNet-LT code: RandomResizedCrop (scale
0.08-1) + flip + colour jitter (0.4, 0.4, 0.4, 0; always) + RandAugment. ``jitter``:
RandomResizedCrop + flip + that colour jitter, the training transform of MiSLAS's and cRT's
released ImageNet-LT and Places-LT code (and MiSLAS's iNaturalist code).

``sim`` (both sizes): SimAugment, ``sim_ops``. RandAugment's settings are ``data.randaug_n``,
``data.randaug_m`` and ``data.randaug_mstd``; its fill colour is the normalisation mean.
Test: ToTensor + Normalize (small), Resize(image_size * 256 / 224) + CenterCrop(image_size)
+ ToTensor + Normalize (large); both are deterministic.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torchvision import transforms as T

from ..errors import ConfigError
from .randaugment import RandAugmentMstd, mean_fill

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
FMNIST_MEAN = (0.2860,)
FMNIST_STD = (0.3530,)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# grey large images: the ImageNet statistics of the luminance
IMAGENET_GREY_MEAN = (0.449,)
IMAGENET_GREY_STD = (0.226,)

# The one list of augmentation presets (data.augment, BCL's and PaCo's view presets). The fast
# path implements a subset of them: allnc.data.fast.FAST_PRESETS.
PRESETS = ("standard", "strong", "none", "sim", "randaug", "jitter")


class Cutout(torch.nn.Module):
    """Zero one ``size`` x ``size`` square per image at a uniformly random centre.

    The square is clipped where it crosses the border (so it may be smaller there). Works
    on one C x H x W tensor or on a batch N x C x H x W (an independent square per image);
    it uses torch's global random stream unless a ``generator`` is given.
    """

    def __init__(self, size: int, generator: torch.Generator | None = None):
        super().__init__()
        if size < 0:
            raise ValueError(f"Cutout size must be >= 0, got {size}")
        self.size = int(size)
        self.generator = generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return x
        single = x.dim() == 3
        xb = x.unsqueeze(0) if single else x
        if xb.dim() != 4:
            raise ValueError(f"Cutout expects C x H x W or N x C x H x W, got shape {tuple(x.shape)}")
        n, _, h, w = xb.shape
        dev = xb.device
        cy = torch.randint(0, h, (n,), generator=self.generator).to(dev)
        cx = torch.randint(0, w, (n,), generator=self.generator).to(dev)
        y0 = (cy - self.size // 2)[:, None]
        x0 = (cx - self.size // 2)[:, None]
        rows = torch.arange(h, device=dev)[None, :]
        cols = torch.arange(w, device=dev)[None, :]
        in_r = (rows >= y0) & (rows < y0 + self.size)
        in_c = (cols >= x0) & (cols < x0 + self.size)
        keep = ~(in_r[:, :, None] & in_c[:, None, :])
        out = xb * keep[:, None].to(xb.dtype)
        return out[0] if single else out

    def extra_repr(self) -> str:
        return f"size={self.size}"


class MultiView:
    """Apply a transform ``views`` times (or one transform per view) to one image and
    return the list of results (the k augmented views of contrastive methods)."""

    def __init__(self, transform: Callable | Sequence[Callable], views: int = 2):
        ts = list(transform) if isinstance(transform, (list, tuple)) else [transform]
        if views < 1:
            raise ValueError(f"views must be at least 1, got {views}")
        if len(ts) == 1:
            ts = ts * views
        if len(ts) != views:
            raise ValueError(f"{len(ts)} transforms given for {views} views")
        self.transforms = ts
        self.views = views

    def __call__(self, img: Any) -> list:
        return [t(img) for t in self.transforms]

    def __repr__(self) -> str:
        return f"MultiView(views={self.views}, transforms={self.transforms[0]!r})"


def _get(cfg: Any, key: str, default: Any) -> Any:
    try:
        v = getattr(cfg, key)
    except AttributeError:
        return default
    return default if v is None else v


def _stats(data_cfg: Any, bundle: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    mean = tuple(float(v) for v in _get(data_cfg, "mean", bundle.mean))
    std = tuple(float(v) for v in _get(data_cfg, "std", bundle.std))
    c = int(bundle.in_channels)
    if len(mean) != c or len(std) != c:
        raise ConfigError(
            f"data.mean/data.std have {len(mean)}/{len(std)} values but the images have {c} channel(s); "
            f"give {c} values each or null for the dataset default"
        )
    if any(s <= 0 for s in std):
        raise ConfigError("data.std values must be positive")
    return mean, std


def sim_ops(size: tuple[int, int], channels: int) -> list:
    """SimAugment, the contrastive views of SimCLR-style methods (BCL's "sim" views):
    RandomResizedCrop (scale 0.08-1) + flip + colour jitter (0.4, 0.4, 0.4, 0.1) with
    p = 0.8 + greyscale with p = 0.2 (grey images: brightness and contrast only)."""
    ops: list = [T.RandomResizedCrop(size, scale=(0.08, 1.0)), T.RandomHorizontalFlip()]
    if channels == 3:
        ops += [T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), T.RandomGrayscale(p=0.2)]
    else:
        ops += [T.RandomApply([T.ColorJitter(0.4, 0.4)], p=0.8)]
    return ops


def randaugment(data_cfg: Any, mean: Sequence[float]) -> RandAugmentMstd:
    """RandAugment with ``data.randaug_n``, ``randaug_m``, ``randaug_mstd`` (defaults: the released
    ``rand-n2-m10-mstd0.5``), filling with the mean colour."""
    return RandAugmentMstd(n=int(_get(data_cfg, "randaug_n", 2)), m=float(_get(data_cfg, "randaug_m", 10.0)),
                           mstd=float(_get(data_cfg, "randaug_mstd", 0.5)), fill=mean_fill(tuple(mean)))


def build_transform(data_cfg: Any, bundle: Any, train: bool) -> Callable:
    """The torchvision transform of the ``data.augment`` preset (``train``) or of testing.

    ``bundle`` gives ``small``, ``image_hw``, ``in_channels``, ``mean``, ``std``;
    ``data.mean``/``data.std`` override the bundle's statistics when set.
    """
    preset = str(_get(data_cfg, "augment", "standard")) if train else "test"
    if train and preset not in PRESETS:
        raise ConfigError(f"data.augment={preset!r} is not one of: {', '.join(PRESETS)}")
    mean, std = _stats(data_cfg, bundle)
    finish = [T.ToTensor(), T.Normalize(mean, std)]
    if bundle.small:
        h, w = (int(v) for v in bundle.image_hw)
        if preset in ("none", "test"):
            return T.Compose(finish)
        if preset == "sim":
            return T.Compose(sim_ops((h, w), int(bundle.in_channels)) + finish)
        ops: list = [T.RandomCrop((h, w), padding=4), T.RandomHorizontalFlip()]
        if preset == "strong":
            ops.append(T.AutoAugment(T.AutoAugmentPolicy.CIFAR10))
        if preset == "randaug":
            ops.append(randaugment(data_cfg, mean))
        if preset == "jitter":
            ops.append(colour_jitter(int(bundle.in_channels)))
        ops += finish
        cut = int(_get(data_cfg, "cutout", 16))
        if preset == "strong" and cut > 0:
            ops.append(Cutout(cut))
        return T.Compose(ops)
    size = int(_get(data_cfg, "image_size", 224))
    if preset in ("none", "test"):
        return T.Compose([T.Resize(int(size * 256 / 224)), T.CenterCrop(size)] + finish)
    if preset == "sim":
        return T.Compose(sim_ops((size, size), int(bundle.in_channels)) + finish)
    if preset == "randaug":
        return T.Compose([T.RandomResizedCrop(size, scale=(0.08, 1.0)), T.RandomHorizontalFlip(),
                          colour_jitter(int(bundle.in_channels)), randaugment(data_cfg, mean)] + finish)
    ops = [T.RandomResizedCrop(size), T.RandomHorizontalFlip()]
    if preset == "strong":
        ops.append(T.AutoAugment(T.AutoAugmentPolicy.IMAGENET))
    if preset == "jitter":
        ops.append(colour_jitter(int(bundle.in_channels)))
    return T.Compose(ops + finish)


def colour_jitter(channels: int) -> T.ColorJitter:
    """Brightness, contrast and saturation 0.4, hue 0, applied always (grey images: the
    first two)."""
    return T.ColorJitter(0.4, 0.4, 0.4, 0.0) if channels == 3 else T.ColorJitter(0.4, 0.4)

"""``build_data(cfg)``: the source named by ``cfg.data``, its long-tailed training subset,
and everything the model and the transforms need to know about it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
from torch.utils.data import Dataset

from ..config_io import section
from ..errors import ConfigError, DataError
from . import augment as A
from .augment import MultiView
from .longtail import lt_counts, lt_indices, val_split
from .sources import SOURCES, Source, Split

#: the data.name values, in the order an error lists them (each is a loader in SOURCES)
NAMES = ("fmnist", "cifar10", "cifar100", "imagefolder", "listfile")


@dataclass
class DataBundle:
    """The data of one experiment; ``train`` is already the long-tailed subset."""

    train: Split
    test: Split
    class_counts: np.ndarray  # np.int64, K: training images per class
    num_classes: int
    classes: list[str]
    in_channels: int
    image_hw: tuple[int, int]  # size of the tensors the transforms produce
    mean: tuple[float, ...]
    std: tuple[float, ...]
    small: bool  # images held in memory as uint8 (small-image transforms)
    label: str  # e.g. "Fashion-MNIST-LT (IF 100, exp)"
    name: str = ""  # cfg.data.name
    imbalance_factor: float = 1.0  # n_max / n_min of the training counts
    source: str = ""  # where the files came from
    val: Optional[Split] = None  # balanced validation split (data.val_per_class), disjoint from train and test
    val_moved: Optional[dict] = None  # {class: images moved from training to validation}


def has_validation(cfg: Any) -> bool:
    """Whether the data (the whole config or its ``data`` section) have a validation split:
    ``data.val_per_class`` images per class drawn from the left-out images, or a list file's
    ``data.val_list``."""
    d = section(cfg, "data")
    return bool(d.val_per_class) or (d.name == "listfile" and bool(getattr(d, "val_list", None)))


def validation_key(cfg: Any) -> str:
    """The override that gives these data a validation split (for messages that ask for one)."""
    return "data.val_list=FILE" if section(cfg, "data").name == "listfile" else "data.val_per_class=N"


def _load(d: Any) -> Source:
    name = d.name
    if not isinstance(name, str) or name not in SOURCES:
        raise ConfigError(f"data.name={name!r} is not one of: {', '.join(NAMES)}")
    return SOURCES.get(name)(d)


def _default_stats(name: str, small: bool, channels: int) -> tuple[tuple, tuple]:
    if name == "fmnist":
        return A.FMNIST_MEAN, A.FMNIST_STD
    if small:
        return (A.CIFAR_MEAN, A.CIFAR_STD) if channels == 3 else (A.FMNIST_MEAN, A.FMNIST_STD)
    return (A.IMAGENET_MEAN, A.IMAGENET_STD) if channels == 3 else (A.IMAGENET_GREY_MEAN, A.IMAGENET_GREY_STD)


def build_data(cfg: Any) -> DataBundle:
    """Load ``cfg.data`` (the whole config or just its ``data`` section) and draw the
    long-tailed training subset: counts ``lt_counts(n_max, K, IF, kind)`` with n_max the
    largest class of the source's training set, images ``lt_indices(..., data.lt_seed)``.
    ``imbalance_factor`` 1 keeps the whole training set; list files are kept as given."""
    d = section(cfg, "data")
    src = _load(d)
    train = src.train
    k = train.num_classes
    if k < 2:
        only = f" ('{train.classes[0]}')" if k else ""
        raise DataError(f"{src.where} has {k} class{only}; a classifier needs at least two, so give each class "
                        "its own folder (or label) in the training data")
    source_counts = train.counts()
    empty = [c for c, n in enumerate(source_counts) if n == 0]
    if empty:  # a fixed class list (Fashion-MNIST, CIFAR) may hold a class with no image
        raise DataError(f"'{train.classes[empty[0]]}' (class {empty[0]}) has no training image in {src.where}"
                        f"{f' (and {len(empty) - 1} more classes)' if len(empty) > 1 else ''}; every class needs at "
                        "least one (class priors, margins and re-sampling divide by the counts)")
    if len(src.test.targets) == 0:
        raise DataError(f"the test split of {src.where} holds no image; give it images (a run is evaluated on it)")
    tr_img, te_img = src.train.images, src.test.images
    if tr_img is not None and te_img is not None and tr_img.shape[1:3] != te_img.shape[1:3]:
        (h, w), (th, tw) = tr_img.shape[1:3], te_img.shape[1:3]
        raise DataError(f"the training images of {src.where} are {w}x{h} but its test images are {tw}x{th}; the "
                        f"model would be tested at another size: give data.small_size={max(h, w)} to decode both at "
                        "one size")
    factor = float(d.imbalance_factor)
    kind = str(d.imbalance_type)
    base = {"fmnist": "Fashion-MNIST", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}.get(d.name)
    if base is None:
        base = src.name if d.name == "listfile" else f"'{Path(src.root).name}'"
    n_val = int(getattr(d, "val_per_class", 0) or 0)
    if n_val and src.long_tailed:
        raise ConfigError("data.val_per_class draws a validation split from the images the long tail leaves out; "
                          "list-file data are long-tailed as given, so give them none (data.val_per_class=0)")
    val = None
    moved: dict = {}
    if src.long_tailed:
        label = f"{base} {src.where} (as given; data.imbalance_factor ignored)"
        if src.val is not None:
            val = src.val
            label += f", validation list {Path(str(d.val_list)).name} ({len(val.targets)} images)"
    elif factor == 1:
        label = f"{base} (full training set, IF 1)"
        kept = np.arange(len(train.targets))
    else:
        if factor < 1:
            raise ConfigError(f"data.imbalance_factor={factor} is below 1; use 1 for the balanced set or e.g. 100")
        n_max = int(source_counts.max())
        counts = lt_counts(n_max, k, factor, kind)
        if min(counts) < 1:
            c = int(np.argmin(counts))
            # n_max itself can round the last class to 0 images (int(49 * (1/49)) == 0 in floats)
            fits = min(lt_counts(n_max, k, float(n_max), kind)) >= 1
            most = f"of at most {n_max}" if fits else f"below {n_max} (for example {n_max * 0.999:.4g})"
            raise ConfigError(
                f"data.imbalance_factor={factor:g} leaves '{train.classes[c]}' (class {c}) with no training image "
                f"(n_max is {n_max}); use an imbalance factor {most}")
        kept = lt_indices(train.targets, counts, int(d.lt_seed), train.classes)
        label = f"{base}-LT (IF {factor:g}, {kind})"
    if not src.long_tailed:
        if n_val:
            val_idx, kept, moved = val_split(train.targets, kept, n_val, (int(d.lt_seed) + 1) % 2**32, train.classes)
            val = train.subset(val_idx)
            label += f", validation {n_val}/class"
        if factor != 1 or n_val:
            train = train.subset(kept)
    if src.fmt == "folder":
        label += f" {src.where}"
    class_counts = train.counts()
    nz = class_counts[class_counts > 0]
    small = train.in_memory
    hw = tuple(int(v) for v in train.images.shape[1:3]) if small else (int(d.image_size),) * 2  # type: ignore[union-attr]
    mean, std = _default_stats(d.name, small, train.in_channels)
    if d.mean is not None:
        mean = tuple(float(v) for v in d.mean)
    if d.std is not None:
        std = tuple(float(v) for v in d.std)
    if len(mean) != train.in_channels or len(std) != train.in_channels:
        raise ConfigError(
            f"data.mean/data.std have {len(mean)}/{len(std)} values but the images have "
            f"{train.in_channels} channel(s); give that many values or null for the default"
        )
    return DataBundle(
        train=train,
        test=src.test,
        class_counts=class_counts,
        num_classes=k,
        classes=list(train.classes),
        in_channels=train.in_channels,
        image_hw=hw,  # type: ignore[arg-type]
        mean=tuple(mean),
        std=tuple(std),
        small=small,
        label=label,
        name=str(d.name),
        imbalance_factor=float(nz.max() / nz.min()) if len(nz) else 1.0,
        source=f"{src.name} {src.where}",
        val=val,
        val_moved=moved or None,
    )


class SplitDataset(Dataset):
    """``(x, y, index)`` of a Split; ``x`` is a tensor, or a list of ``views`` tensors."""

    def __init__(self, split: Split, transform: Optional[Callable], views: int = 1):
        if views < 1:
            raise ValueError(f"views must be at least 1, got {views}")
        self.split = split
        self.views = int(views)
        if views > 1 and not isinstance(transform, MultiView):
            transform = MultiView(transform, views)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        img = self.split.load(i)
        x = self.transform(img) if self.transform is not None else img
        return x, int(self.split.targets[i]), int(i)


def make_dataset(split: Split, transform: Optional[Callable], views: int = 1) -> SplitDataset:
    """A torch Dataset of ``split`` returning ``(x, y, index)``; with ``views`` > 1, ``x``
    is the list of ``views`` independently augmented tensors of the image."""
    return SplitDataset(split, transform, views)

"""What every data source shares: the :class:`Split` and :class:`Source` a loader returns,
the registry ``SOURCES`` of loaders by ``data.name``, and the small-image machinery of the
file-based formats: small images (at most 64x64, judged from a few of them) are decoded
once into one uint8 array (optionally cached as ``.npz``); large ones stay on disk as
paths and are decoded when loaded.

A loader is registered as ``@SOURCES.register("name")`` on a callable that takes the
``data`` config section (attributes ``name``, ``root``, ``download``, ``cache_dir``,
``train_list``, ``test_list`` ...) and returns a :class:`Source`.
"""
from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
from PIL import Image

from ...errors import DataError
from ...registry import Registry

#: where a dataset is looked for (and downloaded to) when ``data.root`` is null
DATA_HOME = Path("~/.cache/allnc/data").expanduser()

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".pbm", ".tif", ".tiff", ".webp", ".gif")
#: images at most this many pixels high and wide are "small": decoded into memory
SMALL_MAX_SIDE = 64
#: how many images decide small/large and grey/colour
PROBE_IMAGES = 8
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def to_mode(im: Image.Image, mode: str) -> Image.Image:
    """``im`` as an 8-bit image of ``mode`` ("L" or "RGB"). 16-bit grey images (Pillow's
    ``I;16*`` modes, and ``I`` holding values above 255) are scaled to 0..255 (value / 257),
    where Pillow's own conversion clips them (every value above 255 would turn white)."""
    if im.mode.startswith("I;16") or im.mode == "I":
        a = np.asarray(im).astype(np.int64)
        if im.mode.startswith("I;16") or a.max(initial=0) > 255:
            a = np.rint(np.clip(a, 0, 65535) / 257.0)
        im = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "L")
    return im.convert(mode)  # a loaded copy, also in the same mode: the file may close after this

#: ``data.name`` -> loader taking the ``data`` config section and returning a Source
SOURCES: Registry[Callable[[Any], "Source"]] = Registry("data source")


# ------------------------------------------------------------------------------ Split
@dataclass
class Split:
    """One split of a dataset: labels plus either decoded pixels or image files.

    ``images`` is uint8 N x H x W x C (C = 1 for grey) when the images live in memory,
    ``paths`` the image files otherwise; ``mode`` is the PIL mode ``load`` returns
    ("RGB" or "L"); ``origin`` holds each sample's index in the full source split (after
    a long-tailed subset it tells which source images were kept).
    """

    targets: np.ndarray
    classes: list[str]
    images: Optional[np.ndarray] = None
    paths: Optional[list[str]] = None
    mode: str = "RGB"
    origin: Optional[np.ndarray] = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.targets = np.asarray(self.targets, dtype=np.int64)
        self.classes = [str(c) for c in self.classes]
        if self.mode not in ("RGB", "L"):
            raise ValueError(f"Split.mode must be RGB or L, got {self.mode!r}")
        if (self.images is None) == (self.paths is None):
            raise ValueError("a Split holds exactly one of images (in memory) and paths (on disk)")
        n = len(self.targets)
        if self.images is not None:
            if self.images.dtype != np.uint8 or self.images.ndim != 4:
                raise ValueError(f"Split.images must be uint8 N x H x W x C, got {self.images.dtype} {self.images.shape}")
            if len(self.images) != n:
                raise ValueError(f"Split has {len(self.images)} images but {n} targets")
            if self.images.shape[3] != (1 if self.mode == "L" else 3):
                raise ValueError(f"Split.images has {self.images.shape[3]} channels but mode {self.mode}")
        else:
            self.paths = [str(p) for p in self.paths]  # type: ignore[union-attr]
            if len(self.paths) != n:
                raise ValueError(f"Split has {len(self.paths)} paths but {n} targets")
        if self.origin is None:
            self.origin = np.arange(n, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return 1 if self.mode == "L" else 3

    @property
    def in_memory(self) -> bool:
        return self.images is not None

    def counts(self) -> np.ndarray:
        """Images per class (np.int64, K)."""
        return np.bincount(self.targets, minlength=self.num_classes).astype(np.int64)

    def load(self, i: int) -> Image.Image:
        """Image ``i`` as a PIL image of mode ``self.mode``."""
        if self.images is not None:
            a = self.images[i]
            return Image.fromarray(a[:, :, 0] if self.mode == "L" else a)
        path = self.paths[i]  # type: ignore[index]
        try:
            with Image.open(path) as im:
                return to_mode(im, self.mode)
        except Exception as e:  # noqa: BLE001 - any decoder failure is a bad file
            raise DataError(f"cannot read image {path}: {_reason(e)}; replace or remove the file") from None

    def subset(self, indices: Sequence[int] | np.ndarray) -> "Split":
        idx = np.asarray(indices, dtype=np.int64)
        return replace(
            self,
            targets=self.targets[idx],
            images=None if self.images is None else self.images[idx],
            paths=None if self.paths is None else [self.paths[i] for i in idx],
            origin=self.origin[idx],  # type: ignore[index]
        )

@dataclass
class Source:
    """What a loader found: the two splits and how to describe them."""

    train: Split
    test: Split
    name: str  # "CIFAR-10", "Fashion-MNIST", "image folder", "list file"
    fmt: str  # pickle | idx | folder | list | download
    root: str
    where: str  # human description of the files, e.g. "from image folder /data/c10 (JPEG)"
    long_tailed: bool = False  # already long-tailed (list files): no subsetting
    val: Optional[Split] = None  # a validation split the source names itself (a list file's data.val_list)

def _reason(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


# ----------------------------------------------------------- small images in memory
def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)

def _open_header(path: str) -> tuple[tuple[int, int], str]:
    try:
        with Image.open(path) as im:
            return im.size, im.mode
    except FileNotFoundError:
        raise DataError(f"image {path} does not exist; fix the path or the list file") from None
    except Exception as e:  # noqa: BLE001
        raise DataError(f"cannot read image {path}: {_reason(e)}; replace or remove the file") from None

def probe(paths: Sequence[str], k: int = PROBE_IMAGES) -> tuple[bool, str]:
    """(small, mode): small if each of ``k`` images spread over ``paths`` is at most
    SMALL_MAX_SIDE pixels high and wide; mode "L" if every image is grey, else "RGB". Where
    the sample is all grey and the images are small (all decoded anyway), every header is read:
    one colour image among grey ones keeps the set in colour."""
    if not paths:
        return True, "RGB"
    step = max(1, len(paths) // k)
    heads = [_open_header(p) for p in list(paths)[::step][:k]]
    small = all(w <= SMALL_MAX_SIDE and h <= SMALL_MAX_SIDE for (w, h), _ in heads)
    grey = all(m in _GREY_MODES for _, m in heads)
    if grey and small:
        grey = all(_open_header(p)[1] in _GREY_MODES for p in paths)
    return small, "L" if grey else "RGB"

def decode_images(paths: Sequence[str], mode: str, size: Optional[int] = None) -> np.ndarray:
    """Decode every image with Pillow into one uint8 N x H x W x C array: each resized to
    ``size`` x ``size`` (bilinear) when ``size`` is given, else all must have one size."""
    n = len(paths)
    c = 1 if mode == "L" else 3
    if n == 0:
        return np.zeros((0, size or 1, size or 1, c), dtype=np.uint8)
    first = None
    out = None
    for i, p in enumerate(paths):
        try:
            with Image.open(p) as im:
                im = to_mode(im, mode)
                if size is not None and im.size != (size, size):
                    im = im.resize((size, size), Image.BILINEAR)
                a = np.asarray(im)
        except FileNotFoundError:
            raise DataError(f"image {p} does not exist; fix the path or the list file") from None
        except Exception as e:  # noqa: BLE001
            raise DataError(f"cannot read image {p}: {_reason(e)}; replace or remove the file") from None
        if out is None:
            first = p
            h, w = a.shape[:2]
            out = np.empty((n, h, w, c), dtype=np.uint8)
        if a.shape[:2] != out.shape[1:3]:
            h, w = out.shape[1:3]
            raise DataError(
                f"image {p} is {a.shape[1]}x{a.shape[0]} but {first} is {w}x{h}: images judged small (at most "
                f"{SMALL_MAX_SIDE}x{SMALL_MAX_SIDE}, from {PROBE_IMAGES} of them) are decoded into memory at one "
                f"size; set data.small_size={max(h, w)} to resize every image to {max(h, w)}x{max(h, w)}"
            )
        out[i] = a.reshape(out.shape[1:])
    return out


def _decode(paths: Sequence[str], mode: str, size: Optional[int] = None) -> np.ndarray:
    """``decode_images`` as the package ``allnc.data.sources`` exports it, looked up when
    called, so that replacing ``allnc.data.sources.decode_images`` (as a test does to prove
    the cache is read) still takes effect."""
    pkg = sys.modules.get(__package__ or "")
    return getattr(pkg, "decode_images", decode_images)(paths, mode, size)


def _cache_file(cache_dir: Path, tag: str, paths: Sequence[str], mode: str, size: Optional[int] = None) -> Path:
    h = hashlib.sha1(mode.encode() if size is None else f"{mode}\0{size}".encode())
    for p in paths:
        st = os.stat(p)
        h.update(f"{os.path.abspath(p)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in tag)[:60]
    return cache_dir / f"{safe}-{h.hexdigest()[:16]}.npz"

def materialize(paths: list[str], targets: np.ndarray, classes: list[str], cache_dir: Optional[str] = None,
                tag: str = "images", decide: Optional[tuple[bool, str]] = None, size: Optional[int] = None) -> Split:
    """A Split of ``paths``: decoded into memory when the images are small or ``size`` is
    given (each then resized to ``size`` x ``size``; cached as ``.npz`` under ``cache_dir``
    when given), else kept as paths."""
    small, mode = decide if decide is not None else probe(paths)
    if not small and size is None:
        return Split(targets=targets, classes=classes, paths=paths, mode=mode)
    cfile = None
    if cache_dir:
        cdir = Path(cache_dir).expanduser()
        cfile = _cache_file(cdir, tag, paths, mode, size)
        if cfile.is_file():
            try:
                with np.load(cfile) as z:
                    images = z["images"]
                if len(images) == len(paths) and images.dtype == np.uint8:
                    return Split(targets=targets, classes=classes, images=images, mode=mode)
            except Exception:  # noqa: BLE001 - a broken cache is rebuilt
                pass
    images = _decode(paths, mode, size)
    if cfile is not None:
        try:
            cfile.parent.mkdir(parents=True, exist_ok=True)
            tmp = cfile.with_name(cfile.name + f".{os.getpid()}.tmp.npz")
            np.savez(tmp, images=images)
            os.replace(tmp, cfile)
        except OSError as e:
            raise DataError(f"cannot write the image cache {cfile} ({_reason(e)}); fix data.cache_dir or set it to null") from None
    return Split(targets=targets, classes=classes, images=images, mode=mode)

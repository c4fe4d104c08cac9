"""Data sources in their real on-disk formats, each giving a train and a test :class:`Split`.

* CIFAR-10 / CIFAR-100: torchvision's pickle batches (``cifar-10-batches-py/``,
  ``cifar-100-python/``) or an image-folder tree ``train/<class>/*``, ``test/<class>/*``
  (for example a JPEG copy); which one is detected from what the root holds.
* Fashion-MNIST: the IDX files (gzipped or not), flat as Debian's ``dataset-fashion-mnist``
  installs them or in torchvision's ``FashionMNIST/raw/`` layout.
* Any image-folder tree ``train/<class>/*``, ``test/<class>/*``.
* "relative/path label" list files (ImageNet-LT, iNaturalist, Places-LT style).

Classes of an image folder are its sub-folders sorted by name; files are sorted by name
within a class. Small images (at most 64x64, judged from a few of them) are decoded once
into one uint8 array (optionally cached as ``.npz``); large ones stay on disk as paths and
are decoded when loaded.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from ..errors import DataError

#: where a dataset is looked for (and downloaded to) when ``data.root`` is null
DATA_HOME = Path("~/.cache/allnc/data").expanduser()
#: Debian's ``dataset-fashion-mnist`` package installs the IDX files here
FMNIST_DEBIAN = Path("/usr/share/datasets/fashion-mnist")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".pbm", ".tif", ".tiff", ".webp", ".gif")
#: images at most this many pixels high and wide are "small": decoded into memory
SMALL_MAX_SIDE = 64
#: how many images decide small/large and grey/colour
PROBE_IMAGES = 8

FMNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


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
                return im.convert(self.mode)
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


def _reason(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


# ----------------------------------------------------------------------- CIFAR pickles
_CIFAR = {
    10: dict(name="CIFAR-10", dir="cifar-10-batches-py", train=[f"data_batch_{i}" for i in range(1, 6)],
             test=["test_batch"], meta="batches.meta", label_key="labels", names_key="label_names"),
    100: dict(name="CIFAR-100", dir="cifar-100-python", train=["train"], test=["test"], meta="meta",
              label_key="fine_labels", names_key="fine_label_names"),
}


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")
    except FileNotFoundError:
        raise DataError(f"missing file {path}: the CIFAR pickle folder is incomplete; download it again (data.download=true)") from None
    except Exception as e:  # noqa: BLE001
        raise DataError(f"{path} is not a readable CIFAR pickle file ({_reason(e)}); download it again (data.download=true)") from None
    if not isinstance(d, dict):
        raise DataError(f"{path} does not hold a CIFAR pickle dict; download it again (data.download=true)")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in d.items()}


def read_cifar_pickles(folder: Path | str, num_classes: int) -> tuple[Split, Split]:
    """Read torchvision's ``cifar-10-batches-py`` / ``cifar-100-python`` folder."""
    spec = _CIFAR[num_classes]
    folder = Path(folder)
    meta = _unpickle(folder / spec["meta"])
    names = meta.get(spec["names_key"])
    if names is None or len(names) != num_classes:
        raise DataError(f"{folder / spec['meta']} has no list of {num_classes} '{spec['names_key']}'; download it again")
    classes = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]

    def read(files: list[str]) -> Split:
        datas, labels = [], []
        for fname in files:
            path = folder / fname
            d = _unpickle(path)
            data, lab = d.get("data"), d.get(spec["label_key"])
            if data is None or lab is None:
                raise DataError(f"{path} lacks the 'data' or '{spec['label_key']}' entry of a {spec['name']} batch")
            data = np.asarray(data)
            lab = np.asarray(lab, dtype=np.int64)
            if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(lab) != len(data):
                raise DataError(
                    f"{path} holds data of shape {data.shape} ({data.dtype}) and {len(lab)} labels, "
                    "not N x 3072 uint8 with N labels; download it again (data.download=true)"
                )
            if len(lab) and (lab.min() < 0 or lab.max() >= num_classes):
                raise DataError(f"{path} has labels outside 0..{num_classes - 1}; is it {spec['name']}?")
            datas.append(data)
            labels.append(lab)
        images = np.concatenate(datas).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return Split(targets=np.concatenate(labels), classes=classes, images=np.ascontiguousarray(images), mode="RGB")

    return read(spec["train"]), read(spec["test"])


def _find_cifar_pickles(root: Path, num_classes: int) -> Optional[Path]:
    spec = _CIFAR[num_classes]
    for cand in (root / spec["dir"], root):
        if (cand / spec["train"][0]).is_file() and (cand / spec["meta"]).is_file():
            return cand
    return None


def _is_folder_tree(root: Path) -> bool:
    return (root / "train").is_dir() and (root / "test").is_dir()


def load_cifar(num_classes: int, root: Optional[str] = None, download: bool = False,
               cache_dir: Optional[str] = None) -> Source:
    """CIFAR-10 (``num_classes=10``) or CIFAR-100 from pickle batches or an image folder.

    ``root`` may hold ``cifar-10-batches-py/`` (``cifar-100-python/``), be that folder
    itself, or hold ``train/<class>/`` and ``test/<class>/`` image folders. With nothing
    there and ``download``, torchvision downloads the pickle batches into ``root``.
    """
    if num_classes not in _CIFAR:
        raise ValueError("CIFAR has 10 or 100 classes")
    spec = _CIFAR[num_classes]
    base = Path(root).expanduser() if root else DATA_HOME
    found = _find_cifar_pickles(base, num_classes)
    if found is not None:
        train, test = read_cifar_pickles(found, num_classes)
        return Source(train, test, spec["name"], "pickle", str(base), f"from pickle batches in {found}")
    if _is_folder_tree(base):
        src = load_imagefolder(str(base), cache_dir=cache_dir, name=spec["name"])
        if src.train.num_classes != num_classes:
            raise DataError(
                f"{base / 'train'} holds {src.train.num_classes} class folders, not the {num_classes} of "
                f"{spec['name']}; use data.name=imagefolder for other data"
            )
        return src
    if download:
        import torchvision

        cls = torchvision.datasets.CIFAR10 if num_classes == 10 else torchvision.datasets.CIFAR100
        base.mkdir(parents=True, exist_ok=True)
        try:
            cls(str(base), train=True, download=True)
            cls(str(base), train=False, download=True)
        except Exception as e:  # noqa: BLE001 - network or disk failure
            raise DataError(f"downloading {spec['name']} into {base} failed ({_reason(e)}); "
                            f"check the internet connection or set data.root to a folder holding {spec['dir']}") from None
        found = _find_cifar_pickles(base, num_classes)
        if found is None:
            raise DataError(f"torchvision's download left no {spec['dir']} in {base}")
        train, test = read_cifar_pickles(found, num_classes)
        return Source(train, test, spec["name"], "download", str(base), f"from pickle batches in {found}")
    raise DataError(
        f"no {spec['name']} data in {base}: looked for {base / spec['dir']} (torchvision pickle batches) "
        f"and {base}/train/<class>/ + {base}/test/<class>/ (image folders); set data.download=true to "
        f"download it, or data.root=<dir with {spec['dir']} or train/ and test/ folders>"
    )


# -------------------------------------------------------------------------------- IDX
_IDX_TYPES = {0x08: np.uint8}


def read_idx(path: Path | str, ndim: int) -> np.ndarray:
    """Parse an IDX file (``.gz`` or not) of unsigned bytes with ``ndim`` dimensions."""
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"missing file {path}") from None
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path} is corrupt or truncated ({_reason(e)}); download it again") from None
    want = 0x0800 + ndim
    magic = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if magic is None or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES or raw[3] != ndim:
        got = "too short to hold a header" if magic is None else f"has magic number 0x{magic:08x}"
        raise DataError(f"{path} {got}, not 0x{want:08x} of an IDX file with {ndim} dimension(s); download it again")
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise DataError(f"{path} is truncated inside its header; download it again")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    size = int(np.prod(dims)) if dims else 0
    if len(raw) - head != size:
        raise DataError(
            f"{path} holds {len(raw) - head} data bytes but its header {dims} promises {size}: "
            "the file is truncated or corrupt; download it again"
        )
    return np.frombuffer(raw, dtype=_IDX_TYPES[raw[2]], offset=head).reshape(dims).copy()


_FMNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _idx_file(folder: Path, stem: str) -> Optional[Path]:
    for cand in (folder / stem, folder / f"{stem}.gz"):
        if cand.is_file():
            return cand
    return None


def _find_fmnist(base: Path) -> Optional[Path]:
    for cand in (base, base / "FashionMNIST" / "raw", base / "raw"):
        if _idx_file(cand, _FMNIST_FILES["train_images"]) is not None:
            return cand
    return None


def read_fmnist_idx(folder: Path | str) -> tuple[Split, Split]:
    folder = Path(folder)
    arrays = {}
    for key, stem in _FMNIST_FILES.items():
        p = _idx_file(folder, stem)
        if p is None:
            raise DataError(f"missing {folder / stem}.gz (or {stem}): the Fashion-MNIST files are incomplete")
        arrays[key] = (p, read_idx(p, 3 if key.endswith("images") else 1))

    def split(which: str) -> Split:
        (pi, x), (pl, y) = arrays[f"{which}_images"], arrays[f"{which}_labels"]
        if len(x) != len(y):
            raise DataError(f"{pi} holds {len(x)} images but {pl} holds {len(y)} labels")
        if len(y) and y.max() >= 10:
            raise DataError(f"{pl} has labels above 9; is it Fashion-MNIST?")
        return Split(targets=y.astype(np.int64), classes=list(FMNIST_CLASSES), images=x[..., None], mode="L")

    return split("train"), split("test")


def load_fmnist(root: Optional[str] = None, download: bool = False) -> Source:
    """Fashion-MNIST from IDX files in ``root`` (default: Debian's place, then DATA_HOME).

    Accepted layouts: the four files (gzipped or not) in ``root``, or torchvision's
    ``root/FashionMNIST/raw/``. With nothing found and ``download``, torchvision downloads
    them into ``root`` (default DATA_HOME).
    """
    bases = [Path(root).expanduser()] if root else [FMNIST_DEBIAN, DATA_HOME]
    for base in bases:
        found = _find_fmnist(base)
        if found is not None:
            train, test = read_fmnist_idx(found)
            return Source(train, test, "Fashion-MNIST", "idx", str(base), f"from IDX files in {found}")
    if download:
        import torchvision

        dest = bases[0] if root else DATA_HOME
        dest.mkdir(parents=True, exist_ok=True)
        try:
            torchvision.datasets.FashionMNIST(str(dest), train=True, download=True)
            torchvision.datasets.FashionMNIST(str(dest), train=False, download=True)
        except Exception as e:  # noqa: BLE001
            raise DataError(f"downloading Fashion-MNIST into {dest} failed ({_reason(e)}); check the internet "
                            "connection, or install it with `apt-get install dataset-fashion-mnist`") from None
        found = _find_fmnist(dest)
        if found is None:
            raise DataError(f"torchvision's download left no Fashion-MNIST IDX files in {dest}")
        train, test = read_fmnist_idx(found)
        return Source(train, test, "Fashion-MNIST", "download", str(dest), f"from IDX files in {found}")
    looked = " and ".join(str(b) for b in bases)
    raise DataError(
        f"no Fashion-MNIST IDX files (train-images-idx3-ubyte.gz ...) in {looked} (nor in FashionMNIST/raw/ "
        "there); install them with `apt-get install dataset-fashion-mnist`, set data.download=true, "
        "or data.root=<dir holding the IDX files>"
    )


# ----------------------------------------------------------------------- image folders
def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def scan_folder(folder: Path, classes: Optional[list[str]] = None) -> tuple[list[str], list[str], np.ndarray]:
    """``folder/<class>/<file>``: (classes sorted by name, paths, targets), files sorted by
    name within each class, classes in order. With ``classes`` given (the training
    classes) a sub-folder outside them is an error; missing ones are allowed."""
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder; an image-folder dataset needs train/<class>/ and test/<class>/")
    found = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    if not found:
        raise DataError(f"{folder} holds no class folders; put the images of each class in {folder}/<class>/")
    training = classes is None
    if classes is None:
        classes = found
    else:
        extra = [c for c in found if c not in classes]
        if extra:
            raise DataError(f"{folder} has class folder '{extra[0]}' that train/ does not have; rename or remove it")
    index = {c: i for i, c in enumerate(classes)}
    paths: list[str] = []
    targets: list[int] = []
    for c in found:
        d = folder / c
        files = sorted(e.name for e in os.scandir(d) if e.is_file() and _is_image(e.name))
        if not files and training:
            raise DataError(f"class folder {d} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        paths.extend(str(d / f) for f in files)
        targets.extend([index[c]] * len(files))
    return classes, paths, np.asarray(targets, dtype=np.int64)


def _open_header(path: str) -> tuple[tuple[int, int], str]:
    try:
        with Image.open(path) as im:
            return im.size, im.mode
    except FileNotFoundError:
        raise DataError(f"image {path} does not exist; fix the path or the list file") from None
    except Exception as e:  # noqa: BLE001
        raise DataError(f"cannot read image {path}: {_reason(e)}; replace or remove the file") from None


def probe(paths: Sequence[str], k: int = PROBE_IMAGES) -> tuple[bool, str]:
    """(small, mode) judged from ``k`` images spread over ``paths``: small if each is at most
    SMALL_MAX_SIDE pixels high and wide; mode "L" if each is grey, else "RGB"."""
    if not paths:
        return True, "RGB"
    step = max(1, len(paths) // k)
    heads = [_open_header(p) for p in list(paths)[::step][:k]]
    small = all(w <= SMALL_MAX_SIDE and h <= SMALL_MAX_SIDE for (w, h), _ in heads)
    mode = "L" if all(m in _GREY_MODES for _, m in heads) else "RGB"
    return small, mode


def decode_images(paths: Sequence[str], mode: str) -> np.ndarray:
    """Decode every image with Pillow into one uint8 N x H x W x C array (all one size)."""
    n = len(paths)
    if n == 0:
        return np.zeros((0, 1, 1, 1 if mode == "L" else 3), dtype=np.uint8)
    first = None
    out = None
    for i, p in enumerate(paths):
        try:
            with Image.open(p) as im:
                if im.mode != mode:
                    im = im.convert(mode)
                a = np.asarray(im)
        except FileNotFoundError:
            raise DataError(f"image {p} does not exist; fix the path or the list file") from None
        except Exception as e:  # noqa: BLE001
            raise DataError(f"cannot read image {p}: {_reason(e)}; replace or remove the file") from None
        if out is None:
            first = p
            h, w = a.shape[:2]
            out = np.empty((n, h, w, 1 if mode == "L" else 3), dtype=np.uint8)
        if a.shape[:2] != out.shape[1:3]:
            raise DataError(
                f"image {p} is {a.shape[1]}x{a.shape[0]} but {first} is {out.shape[2]}x{out.shape[1]}: "
                "small images are stacked in memory and must all have one size; resize them"
            )
        out[i] = a.reshape(out.shape[1:])
    return out


def _cache_file(cache_dir: Path, tag: str, paths: Sequence[str], mode: str) -> Path:
    h = hashlib.sha1(mode.encode())
    for p in paths:
        st = os.stat(p)
        h.update(f"{os.path.abspath(p)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in tag)[:60]
    return cache_dir / f"{safe}-{h.hexdigest()[:16]}.npz"


def materialize(paths: list[str], targets: np.ndarray, classes: list[str], cache_dir: Optional[str] = None,
                tag: str = "images", decide: Optional[tuple[bool, str]] = None) -> Split:
    """A Split of ``paths``: decoded into memory when the images are small (cached as
    ``.npz`` under ``cache_dir`` when given), else kept as paths."""
    small, mode = decide if decide is not None else probe(paths)
    if not small:
        return Split(targets=targets, classes=classes, paths=paths, mode=mode)
    cfile = None
    if cache_dir:
        cdir = Path(cache_dir).expanduser()
        cfile = _cache_file(cdir, tag, paths, mode)
        if cfile.is_file():
            try:
                with np.load(cfile) as z:
                    images = z["images"]
                if len(images) == len(paths) and images.dtype == np.uint8:
                    return Split(targets=targets, classes=classes, images=images, mode=mode)
            except Exception:  # noqa: BLE001 - a broken cache is rebuilt
                pass
    images = decode_images(paths, mode)
    if cfile is not None:
        try:
            cfile.parent.mkdir(parents=True, exist_ok=True)
            tmp = cfile.with_name(cfile.name + f".{os.getpid()}.tmp.npz")
            np.savez(tmp, images=images)
            os.replace(tmp, cfile)
        except OSError as e:
            raise DataError(f"cannot write the image cache {cfile} ({_reason(e)}); fix data.cache_dir or set it to null") from None
    return Split(targets=targets, classes=classes, images=images, mode=mode)


def load_imagefolder(root: Optional[str], cache_dir: Optional[str] = None, name: str = "image folder") -> Source:
    """An image-folder tree ``root/train/<class>/*`` and ``root/test/<class>/*``."""
    if not root:
        raise DataError("data.name=imagefolder needs data.root=<dir with train/<class>/ and test/<class>/ folders>")
    base = Path(root).expanduser()
    if not _is_folder_tree(base):
        raise DataError(f"{base} does not hold train/ and test/ folders; an image-folder dataset is "
                        "<root>/train/<class>/<image> and <root>/test/<class>/<image>")
    classes, tr_paths, tr_targets = scan_folder(base / "train")
    _, te_paths, te_targets = scan_folder(base / "test", classes)
    decide = probe(tr_paths)
    tag = f"{name}-{base.name}"
    train = materialize(tr_paths, tr_targets, classes, cache_dir, tag + "-train", decide)
    test = materialize(te_paths, te_targets, classes, cache_dir, tag + "-test", decide)
    jpeg = " (JPEG)" if tr_paths and tr_paths[0].lower().endswith((".jpg", ".jpeg")) else ""
    return Source(train, test, name, "folder", str(base), f"from image folder {base}{jpeg}")


# -------------------------------------------------------------------------- list files
def read_list_file(list_path: Path, root: Path) -> tuple[list[str], np.ndarray]:
    """Lines ``relative/path label`` (paths relative to ``root``; blank lines and lines
    starting with '#' are skipped); a bad line is a DataError naming file and line."""
    if not list_path.is_file():
        raise DataError(f"list file {list_path} does not exist; data.train_list/test_list are relative to data.root")
    paths: list[str] = []
    labels: list[int] = []
    with open(list_path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            s = line.strip()
            if not s or s.startswith("#"):
                continue
            parts = s.rsplit(None, 1)
            if len(parts) != 2:
                raise DataError(f"{list_path} line {lineno}: expected 'relative/path label', got {s!r}")
            rel, lab = parts
            try:
                label = int(lab)
            except ValueError:
                raise DataError(f"{list_path} line {lineno}: label {lab!r} is not an integer class id") from None
            if label < 0:
                raise DataError(f"{list_path} line {lineno}: label {label} is negative; class ids are 0..K-1")
            paths.append(str(root / rel))
            labels.append(label)
    if not paths:
        raise DataError(f"list file {list_path} holds no 'relative/path label' lines")
    return paths, np.asarray(labels, dtype=np.int64)


def load_listfile(root: Optional[str], train_list: Optional[str], test_list: Optional[str],
                  cache_dir: Optional[str] = None) -> Source:
    """Image files named by "relative/path label" list files (ImageNet-LT, iNaturalist,
    Places-LT style). Class names are the label ids 0..K-1.

    These sets are already long-tailed: their counts are taken from the train list as
    given, ``data.imbalance_factor`` is ignored and no subset is drawn.
    """
    if not train_list or not test_list:
        raise DataError("data.name=listfile needs data.train_list and data.test_list "
                        "(files of 'relative/path label' lines, relative to data.root)")
    base = Path(root).expanduser() if root else Path(".")
    tr_file = Path(train_list) if Path(train_list).is_absolute() else base / train_list
    te_file = Path(test_list) if Path(test_list).is_absolute() else base / test_list
    tr_paths, tr_targets = read_list_file(tr_file, base)
    te_paths, te_targets = read_list_file(te_file, base)
    k = int(max(tr_targets.max(), te_targets.max())) + 1
    have = np.bincount(tr_targets, minlength=k)
    missing = np.flatnonzero(have == 0)
    if len(missing):
        raise DataError(
            f"{tr_file} has no image of class {int(missing[0])} ({len(missing)} of the ids 0..{k - 1} are "
            "missing); labels must be the ids 0..K-1, each with training images"
        )
    classes = [str(i) for i in range(k)]
    decide = probe(tr_paths)
    train = materialize(tr_paths, tr_targets, classes, cache_dir, f"list-{tr_file.stem}", decide)
    test = materialize(te_paths, te_targets, classes, cache_dir, f"list-{te_file.stem}", decide)
    return Source(train, test, "list file", "list", str(base), f"from list file {tr_file}", long_tailed=True)

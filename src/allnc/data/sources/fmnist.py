"""Fashion-MNIST (``data.name`` fmnist): the IDX files (gzipped or not), flat as Debian's
``dataset-fashion-mnist`` installs them or in torchvision's ``FashionMNIST/raw/`` layout.
With nothing found and ``data.download``, torchvision downloads them.
"""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ...errors import DataError
from .base import DATA_HOME, SOURCES, Source, Split, _reason

#: Debian's ``dataset-fashion-mnist`` package installs the IDX files here
FMNIST_DEBIAN = Path("/usr/share/datasets/fashion-mnist")

FMNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]

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


@SOURCES.register("fmnist")
def _fmnist(d: Any) -> Source:
    return load_fmnist(d.root, bool(d.download))

"""CIFAR-10 / CIFAR-100 (``data.name`` cifar10, cifar100): torchvision's pickle batches
(``cifar-10-batches-py/``, ``cifar-100-python/``) or an image-folder tree
``train/<class>/*``, ``test/<class>/*`` (for example a JPEG copy); which one is detected
from what the root holds. With nothing there and ``data.download``, torchvision downloads
the pickle batches.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ...errors import DataError
from .base import DATA_HOME, SOURCES, Source, Split, _reason
from .imagefolder import _is_folder_tree, load_imagefolder

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


@SOURCES.register("cifar10")
def _cifar10(d: Any) -> Source:
    return load_cifar(10, d.root, bool(d.download), d.cache_dir)


@SOURCES.register("cifar100")
def _cifar100(d: Any) -> Source:
    return load_cifar(100, d.root, bool(d.download), d.cache_dir)

"""Image-folder trees (``data.name`` imagefolder): ``root/train/<class>/*`` and
``root/test/<class>/*``. Classes are the sub-folders sorted by name; files are sorted by
name within a class. Small images are decoded into memory (see :mod:`.base`), large ones
stay on disk as paths.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ...errors import DataError
from .base import IMAGE_EXTENSIONS, SOURCES, Source, _is_image, materialize, probe

def _is_folder_tree(root: Path) -> bool:
    return (root / "train").is_dir() and (root / "test").is_dir()

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

def load_imagefolder(root: Optional[str], cache_dir: Optional[str] = None, name: str = "image folder",
                     small_size: Optional[int] = None) -> Source:
    """An image-folder tree ``root/train/<class>/*`` and ``root/test/<class>/*`` (every image
    decoded into memory at ``small_size`` x ``small_size`` when that is given)."""
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
    train = materialize(tr_paths, tr_targets, classes, cache_dir, tag + "-train", decide, small_size)
    test = materialize(te_paths, te_targets, classes, cache_dir, tag + "-test", decide, small_size)
    jpeg = " (JPEG)" if tr_paths and tr_paths[0].lower().endswith((".jpg", ".jpeg")) else ""
    return Source(train, test, name, "folder", str(base), f"from image folder {base}{jpeg}")


@SOURCES.register("imagefolder")
def _imagefolder(d: Any) -> Source:
    return load_imagefolder(d.root, d.cache_dir, small_size=d.small_size)

""""relative/path label" list files (``data.name`` listfile; ImageNet-LT, iNaturalist,
Places-LT style). Class names are the label ids 0..K-1; these sets are already
long-tailed, so they are used as given.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

from ...errors import DataError
from .base import SOURCES, Source, materialize, probe

def read_list_file(list_path: Path, root: Path) -> tuple[list[str], np.ndarray]:
    """Lines ``relative/path label`` (paths relative to ``root``; blank lines and lines
    starting with '#' are skipped); a bad line is a DataError naming file and line."""
    if not list_path.is_file():
        raise DataError(f"list file {list_path} does not exist; data.train_list/test_list/val_list are relative to "
                        "data.root")
    paths: list[str] = []
    labels: list[int] = []
    with open(list_path, encoding="utf-8-sig", errors="replace") as f:  # -sig: a BOM (Windows editors) is not a path
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
                  cache_dir: Optional[str] = None, small_size: Optional[int] = None,
                  val_list: Optional[str] = None) -> Source:
    """Image files named by "relative/path label" list files (ImageNet-LT, iNaturalist,
    Places-LT style). Class names are the label ids 0..K-1.

    These sets are already long-tailed: their counts are taken from the train list as
    given, ``data.imbalance_factor`` is ignored and no subset is drawn. With ``small_size``
    every image is decoded into memory at ``small_size`` x ``small_size``. ``val_list`` (as
    the others, relative to ``root``) is the validation split.
    """
    if not train_list or not test_list:
        raise DataError("data.name=listfile needs data.train_list and data.test_list "
                        "(files of 'relative/path label' lines, relative to data.root)")
    base = Path(root).expanduser() if root else Path(".")
    tr_file = Path(train_list) if Path(train_list).is_absolute() else base / train_list
    te_file = Path(test_list) if Path(test_list).is_absolute() else base / test_list
    tr_paths, tr_targets = read_list_file(tr_file, base)
    te_paths, te_targets = read_list_file(te_file, base)
    k = int(tr_targets.max()) + 1
    others = [(te_file, te_paths, te_targets, "test")]
    if val_list:
        va_file = Path(val_list) if Path(val_list).is_absolute() else base / val_list
        others.append((va_file, *read_list_file(va_file, base), "validation"))
    for o_file, o_paths, o_targets, what in others:
        beyond = np.flatnonzero(o_targets >= k)
        if len(beyond):
            i = int(beyond[0])
            raise DataError(f"{o_file} labels {o_paths[i]} with class {int(o_targets[i])}, but {tr_file} has classes "
                            f"0..{k - 1} only; fix the {what} list or give that class training images")
    have = np.bincount(tr_targets, minlength=k)
    missing = np.flatnonzero(have == 0)
    if len(missing):
        raise DataError(
            f"{tr_file} has no image of class {int(missing[0])} ({len(missing)} of the ids 0..{k - 1} are "
            "missing); labels must be the ids 0..K-1, each with training images"
        )
    classes = [str(i) for i in range(k)]
    decide = probe(tr_paths)
    train = materialize(tr_paths, tr_targets, classes, cache_dir, f"list-{tr_file.stem}", decide, small_size)
    test = materialize(te_paths, te_targets, classes, cache_dir, f"list-{te_file.stem}", decide, small_size)
    val = None
    if val_list:
        va_file, va_paths, va_targets, _ = others[1]
        val = materialize(va_paths, va_targets, classes, cache_dir, f"list-{va_file.stem}", decide, small_size)
    return Source(train, test, "list file", "list", str(base), f"from list file {tr_file}", long_tailed=True, val=val)


@SOURCES.register("listfile")
def _listfile(d: Any) -> Source:
    return load_listfile(d.root, d.train_list, d.test_list, d.cache_dir, d.small_size, d.get("val_list"))

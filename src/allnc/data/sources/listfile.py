""""relative/path label" list files (``data.name`` listfile; ImageNet-LT, iNaturalist,
Places-LT style). Class names are the label ids 0..K-1; these sets are already
long-tailed, so they are used as given.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

from ...errors import DataError
from .base import SOURCES, Source, Split, materialize, probe

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

def _base(root) -> Path:
    """The folder list files and their image paths are relative to: ``data.root`` (else the
    current directory)."""
    return Path(root).expanduser() if root else Path(".")


def _list_path(base: Path, name: str) -> Path:
    """A list file's path: as given when absolute, else relative to ``data.root``."""
    return Path(name) if Path(name).is_absolute() else base / name

def _within(o_file: Path, o_paths: list[str], o_targets: np.ndarray, k: int, tr_file: Any, what: str) -> None:
    """Every label of a test or validation list is one of the training classes 0..k-1."""
    beyond = np.flatnonzero(o_targets >= k)
    if len(beyond):
        i = int(beyond[0])
        raise DataError(f"{o_file} labels {o_paths[i]} with class {int(o_targets[i])}, but {tr_file} has classes "
                        f"0..{k - 1} only; fix the {what} list or give that class training images")

def load_list_split(root: Optional[str], list_name: str, classes: list[str], mode: str, in_memory: bool,
                    cache_dir: Optional[str] = None, small_size: Optional[int] = None,
                    trained_on: str = "the run's training list", what: str = "validation") -> Split:
    """One more list (a validation list given after training) against the classes and the
    decoding of data already loaded: ``mode`` ("L" or "RGB") and ``in_memory`` as the training
    split has them, so its images are prepared exactly as the run's. Only this list is read."""
    base = _base(root)
    f = _list_path(base, list_name)
    paths, targets = read_list_file(f, base)
    _within(f, paths, targets, len(classes), trained_on, what)
    return materialize(paths, targets, classes, cache_dir, f"list-{f.stem}", (in_memory, mode), small_size)

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
    base = _base(root)
    tr_file, te_file = _list_path(base, train_list), _list_path(base, test_list)
    tr_paths, tr_targets = read_list_file(tr_file, base)
    k = int(tr_targets.max()) + 1
    te_paths, te_targets = read_list_file(te_file, base)
    _within(te_file, te_paths, te_targets, k, tr_file, "test")
    va = None
    if val_list:
        va_file = _list_path(base, val_list)
        va = (va_file, *read_list_file(va_file, base))
        _within(*va, k, tr_file, "validation")
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
    if va is not None:
        va_file, va_paths, va_targets = va
        val = materialize(va_paths, va_targets, classes, cache_dir, f"list-{va_file.stem}", decide, small_size)
    return Source(train, test, "list file", "list", str(base), f"from list file {tr_file}", long_tailed=True, val=val)


@SOURCES.register("listfile")
def _listfile(d: Any) -> Source:
    return load_listfile(d.root, d.train_list, d.test_list, d.cache_dir, d.small_size, d.get("val_list"))

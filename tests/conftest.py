"""Shared test fixtures.

Data fixtures (prefixed ``tiny_``) write tiny datasets in their real on-disk formats; each
returns a writer function so a test chooses the sizes and the place (under ``tmp_path``).
"""
from __future__ import annotations

import gzip
import pickle
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
from PIL import Image


def _write_cifar_pickles(root: Path, num_classes: int = 10, per_class: int = 6, test_per_class: int = 2,
                         seed: int = 0, counts: Optional[list[int]] = None) -> dict:
    """Write torchvision's CIFAR pickle folder with random pixels and shuffled labels.

    Returns the arrays written: train_x/test_x (N x 32 x 32 x 3 uint8), train_y/test_y
    (int64), classes, and the folder."""
    rng = np.random.RandomState(seed)
    counts = counts or [per_class] * num_classes
    train_y = rng.permutation(np.repeat(np.arange(num_classes), counts)).astype(np.int64)
    test_y = rng.permutation(np.repeat(np.arange(num_classes), test_per_class)).astype(np.int64)
    train_x = rng.randint(0, 256, size=(len(train_y), 32, 32, 3)).astype(np.uint8)
    test_x = rng.randint(0, 256, size=(len(test_y), 32, 32, 3)).astype(np.uint8)
    classes = [f"class_{c:03d}" for c in range(num_classes)]

    def rows(x: np.ndarray) -> np.ndarray:  # N x 3072, the R, G, B planes one after another
        return x.transpose(0, 3, 1, 2).reshape(len(x), 3072)

    def dump(path: Path, d: dict) -> None:
        with open(path, "wb") as f:
            pickle.dump(d, f)

    if num_classes == 10:
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True, exist_ok=True)
        for i, part in enumerate(np.array_split(np.arange(len(train_y)), 5), 1):
            dump(folder / f"data_batch_{i}",
                 {b"batch_label": f"training batch {i} of 5".encode(), b"labels": train_y[part].tolist(),
                  b"data": rows(train_x[part]), b"filenames": [b"x.png"] * len(part)})
        dump(folder / "test_batch", {b"labels": test_y.tolist(), b"data": rows(test_x)})
        dump(folder / "batches.meta", {b"label_names": [c.encode() for c in classes], b"num_vis": 3072})
    else:
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True, exist_ok=True)
        dump(folder / "train", {b"fine_labels": train_y.tolist(), b"coarse_labels": (train_y // 5).tolist(),
                                b"data": rows(train_x)})
        dump(folder / "test", {b"fine_labels": test_y.tolist(), b"coarse_labels": (test_y // 5).tolist(),
                               b"data": rows(test_x)})
        dump(folder / "meta", {b"fine_label_names": [c.encode() for c in classes],
                               b"coarse_label_names": [b"c"] * (num_classes // 5)})
    return dict(train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y, classes=classes, folder=folder)


def _write_image_folder(root: Path, split: str, images: np.ndarray, targets: np.ndarray, classes: list[str],
                        ext: str = "png") -> list[Path]:
    """Write ``root/split/<class>/NNNN.<ext>``, numbered in the order of ``images`` within
    each class (the order a loader must restore by sorting the names)."""
    paths = []
    seen: dict[int, int] = {}
    for img, t in zip(images, targets):
        t = int(t)
        k = seen.get(t, 0)
        seen[t] = k + 1
        d = root / split / classes[t]
        d.mkdir(parents=True, exist_ok=True)
        p = d / f"{k:04d}.{ext}"
        arr = img[:, :, 0] if img.shape[2] == 1 else img
        Image.fromarray(arr).save(p, quality=95) if ext in ("jpg", "jpeg") else Image.fromarray(arr).save(p)
        paths.append(p)
    return paths


def _write_idx(path: Path, array: np.ndarray, gz: bool = True) -> Path:
    """Write an IDX file of unsigned bytes (magic 0x0000 08 <ndim>, big-endian dims)."""
    a = np.ascontiguousarray(array, dtype=np.uint8)
    head = bytes([0, 0, 0x08, a.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in a.shape)
    data = head + a.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def _write_fmnist(root: Path, n_train: int = 40, n_test: int = 20, gz: bool = True, seed: int = 0) -> dict:
    rng = np.random.RandomState(seed)
    out = {}
    for split, stem, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        x = rng.randint(0, 256, size=(n, 28, 28)).astype(np.uint8)
        y = (np.arange(n) % 10).astype(np.uint8)
        rng.shuffle(y)
        sfx = ".gz" if gz else ""
        _write_idx(root / f"{stem}-images-idx3-ubyte{sfx}", x, gz)
        _write_idx(root / f"{stem}-labels-idx1-ubyte{sfx}", y, gz)
        out[f"{split}_x"], out[f"{split}_y"] = x, y.astype(np.int64)
    return out


@pytest.fixture
def tiny_cifar_pickles():
    return _write_cifar_pickles


@pytest.fixture
def tiny_image_folder():
    return _write_image_folder


@pytest.fixture
def tiny_idx():
    return _write_idx


@pytest.fixture
def tiny_fmnist():
    return _write_fmnist


def _write_learnable_fmnist(root: Path, per_class: int = 60, test_per_class: int = 20, seed: int = 0) -> Path:
    """A Fashion-MNIST-format set that a small network learns in a few epochs: class k is a
    uniform grey level 20 + 23k with noise, which survives crops and flips."""
    rng = np.random.RandomState(seed)
    for stem, n in (("train", per_class), ("t10k", test_per_class)):
        y = np.repeat(np.arange(10), n)
        rng.shuffle(y)
        x = (20 + 23 * y[:, None, None] + rng.randint(-8, 9, size=(len(y), 28, 28))).clip(0, 255)
        _write_idx(root / f"{stem}-images-idx3-ubyte.gz", x)
        _write_idx(root / f"{stem}-labels-idx1-ubyte.gz", y)
    return root


@pytest.fixture(scope="session")
def tiny_learnable_fmnist(tmp_path_factory):
    """Root of a learnable 10-class Fashion-MNIST-format set (60 train, 20 test per class)."""
    return _write_learnable_fmnist(tmp_path_factory.mktemp("learnable_fmnist"))

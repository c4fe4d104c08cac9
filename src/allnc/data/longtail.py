"""The long-tailed training subset: per-class counts, the seeded selection, the groups.

This follows the convention of LDAM-DRW, BBN, MiSLAS and PaCo bit for bit
(``docs/reference.md``):

* ``n_i = int(n_max * (1 / IF) ** (i / (C - 1)))`` for class ``i = 0 .. C-1`` ("exp"), or
  ``n_max`` for the first half of the classes and ``int(n_max / IF)`` for the rest ("step");
* one NumPy stream seeded once (``np.random.seed(seed)``), then for each class in order
  ``idx = np.where(targets == c)[0]; np.random.shuffle(idx); keep idx[:n_c]``.

We use a private ``np.random.RandomState(seed)``, whose stream is the one
``np.random.seed(seed)`` gives the global generator, so the global NumPy state is untouched.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..errors import DataError

KINDS = ("exp", "step")

#: group thresholds: many = more than 100 training images, few = fewer than 20
MANY_ABOVE = 100
FEW_BELOW = 20
GROUP_NAMES = ("many", "medium", "few")


def lt_counts(n_max: int, num_classes: int, imbalance_factor: float, kind: str = "exp") -> list[int]:
    """Training images per class of the long-tailed profile (class 0 is the largest).

    ``imbalance_factor`` is n_max / n_min; 1 gives ``n_max`` for every class.
    """
    n_max = int(n_max)
    num_classes = int(num_classes)
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    if n_max < 1:
        raise ValueError(f"n_max must be at least 1, got {n_max}")
    if imbalance_factor < 1:
        raise ValueError(
            f"imbalance_factor={imbalance_factor} is below 1; it is n_max/n_min (1 = balanced)"
        )
    if kind == "exp":
        if num_classes == 1:
            return [n_max]
        return [int(n_max * (1.0 / imbalance_factor) ** (i / (num_classes - 1))) for i in range(num_classes)]
    if kind == "step":
        head = num_classes // 2
        return [n_max] * head + [int(n_max / imbalance_factor)] * (num_classes - head)
    raise ValueError(f"imbalance kind '{kind}' is not one of: {', '.join(KINDS)}")


def lt_indices(
    targets: Sequence[int] | np.ndarray,
    counts: Sequence[int],
    seed: int = 0,
    class_names: Optional[Sequence[str]] = None,
) -> np.ndarray:
    """Indices (into ``targets``) of the long-tailed subset, concatenated in class order.

    Class ``c`` keeps the first ``counts[c]`` of its indices after a shuffle drawn from one
    NumPy stream seeded once with ``seed``, shuffling the classes in order 0, 1, ...
    Within a class the indices are taken in their order in ``targets`` before the shuffle,
    so the same within-class order gives the same chosen images, whatever the interleaving
    of the classes. A class with fewer images than asked is a :class:`DataError`.
    """
    targets = np.asarray(targets)
    if targets.ndim != 1:
        raise ValueError(f"targets must be 1-D, got shape {targets.shape}")
    counts = [int(c) for c in counts]
    if targets.size and (targets.min() < 0 or targets.max() >= len(counts)):
        raise ValueError(
            f"targets hold labels outside 0..{len(counts) - 1} (min {targets.min()}, max {targets.max()})"
        )
    rng = np.random.RandomState(seed)
    kept = []
    for c, n_c in enumerate(counts):
        idx = np.where(targets == c)[0]
        if n_c > len(idx):
            name = f"'{class_names[c]}' (class {c})" if class_names is not None else f"class {c}"
            if c == 0:  # the profile's largest count: no imbalance factor changes it
                fix = ("class 0 takes the profile's largest count, so the largest class must come first: order the "
                       "classes by decreasing size (image folders are read in sorted name order)")
            else:
                fix = ("the profile's counts fall with the class index: raise data.imbalance_factor or order the "
                       "classes by decreasing size (image folders are read in sorted name order)")
            raise DataError(
                f"{name} has {len(idx)} training images but the long-tailed profile asks for {n_c}; {fix}, "
                "or keep the data as it is with data.imbalance_factor=1"
            )
        rng.shuffle(idx)
        kept.append(idx[:n_c])
    if not kept:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate(kept).astype(np.int64)


def val_split(
    targets: Sequence[int] | np.ndarray,
    kept: np.ndarray,
    per_class: int,
    seed: int = 0,
    class_names: Optional[Sequence[str]] = None,
) -> tuple[np.ndarray, np.ndarray, dict[int, int]]:
    """A balanced validation split of ``per_class`` images per class, disjoint from the
    training images and (being drawn from the training set) from the test set.

    Class c's validation images are drawn (a NumPy stream seeded with ``seed``, classes in
    order) from the training images the long tail left out. A class the long tail keeps
    (nearly) whole, such as the head class at n_max, has fewer left out than asked: the rest
    are taken from the end of its long-tailed selection, so that class then trains on that
    many fewer images. Returns ``(val_idx, train_idx, moved)``: indices into ``targets`` (the
    training indices keep the order of ``kept``) and ``{class: images moved from training to
    validation}`` for the classes that gave some.
    """
    targets = np.asarray(targets)
    kept = np.asarray(kept, dtype=np.int64)
    per_class = int(per_class)
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}")
    in_train = np.zeros(len(targets), dtype=bool)
    in_train[kept] = True
    rng = np.random.RandomState(seed)
    val, moved_out = [], []
    moved: dict[int, int] = {}
    for c in range(int(targets.max()) + 1 if targets.size else 0):
        left = np.where((targets == c) & ~in_train)[0]
        rng.shuffle(left)
        take = left[:per_class]
        short = per_class - len(take)
        if short > 0:
            mine = kept[targets[kept] == c]
            if short >= len(mine):
                name = f"'{class_names[c]}' (class {c})" if class_names is not None else f"class {c}"
                raise DataError(
                    f"{name} has {len(mine) + len(left)} training images, too few for {per_class} validation "
                    "images and at least one training image; lower data.val_per_class"
                )
            give = mine[len(mine) - short:]
            take = np.concatenate([take, give])
            moved_out.append(give)
            moved[c] = int(short)
        val.append(take)
    val_idx = np.concatenate(val).astype(np.int64) if val else np.zeros(0, dtype=np.int64)
    if moved_out:
        gone = np.zeros(len(targets), dtype=bool)
        gone[np.concatenate(moved_out)] = True
        kept = kept[~gone[kept]]
    return val_idx, kept, moved


def group_of(count: int) -> str:
    """The group of one class from its TRAINING count: many (> 100), few (< 20), medium."""
    if count > MANY_ABOVE:
        return "many"
    if count < FEW_BELOW:
        return "few"
    return "medium"


def groups(counts: Sequence[int]) -> dict[str, list[int]]:
    """Class ids per group: many (> 100 training images), medium (20 .. 100), few (< 20).

    Groups come from the counts, never from class index ranges; every key is present, a
    group may be empty; ids are in increasing class order. The package's one home of this
    convention (accuracy, NC figures and reports all use it).
    """
    out: dict[str, list[int]] = {g: [] for g in GROUP_NAMES}
    for c, n in enumerate(np.asarray(counts).reshape(-1).tolist()):
        out[group_of(int(n))].append(c)
    return out

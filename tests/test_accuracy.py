"""Accuracy: a worked example with known numbers, groups from training counts, edge cases."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from allnc.metrics import AccuracyAccumulator, group_classes

# worked example: K = 4, training counts -> many {0}, medium {1}, few {2, 3}
TRAIN = [150, 50, 10, 5]
TARGETS = [0, 0, 0, 0, 1, 1, 2, 2, 2, 2, 2]  # class 3 has no test sample
PREDS = [0, 0, 0, 1, 1, 2, 2, 2, 0, 3, 2]
# class 0: 3/4 = 75 %, class 1: 1/2 = 50 %, class 2: 3/5 = 60 %, class 3: None
# top-1 = 7/11; many = 75, medium = 50, few = mean(60) = 60 (class 3 has no test sample)


def _check_worked(r):
    assert r["top1"] == pytest.approx(100 * 7 / 11)
    assert r["num_samples"] == 11
    assert r["per_class"] == [75.0, 50.0, 60.0, None]
    assert r["per_class_counts"] == [4, 2, 5, 0]
    assert r["class_mean"] == pytest.approx((75 + 50 + 60) / 3)
    assert r["groups"] == {"many": 75.0, "medium": 50.0, "few": 60.0}
    assert r["group_sizes"] == {"many": 1, "medium": 1, "few": 2}
    assert r["confusion"] == [[3, 1, 0, 0], [0, 1, 1, 0], [1, 0, 3, 1], [0, 0, 0, 0]]
    json.dumps(r, allow_nan=False)


def test_worked_example_from_predictions_in_batches():
    acc = AccuracyAccumulator(4)
    t, p = torch.tensor(TARGETS), torch.tensor(PREDS)
    for s in (slice(0, 3), slice(3, 9), slice(9, 11)):
        acc.update(p[s], t[s])
    acc.all_reduce()
    acc.all_reduce()  # idempotent
    _check_worked(acc.result(TRAIN))


def test_worked_example_from_logits():
    logits = torch.full((11, 4), -1.0, dtype=torch.bfloat16)
    logits[torch.arange(11), torch.tensor(PREDS)] = 2.0
    acc = AccuracyAccumulator(4)
    acc.update(logits, torch.tensor(TARGETS))
    _check_worked(acc.result(np.array(TRAIN)))


def test_empty_group_is_none_not_zero():
    acc = AccuracyAccumulator(4)
    acc.update(torch.tensor(PREDS), torch.tensor(TARGETS))
    r = acc.result([500, 300, 150, 120])  # all many
    assert r["groups"] == {"many": pytest.approx((75 + 50 + 60) / 3), "medium": None, "few": None}
    assert r["group_sizes"] == {"many": 4, "medium": 0, "few": 0}
    r = acc.result([500, 300, 150, 3])  # the few group's only class has no test sample
    assert r["groups"]["few"] is None and r["group_sizes"]["few"] == 1
    assert acc.result()["groups"] is None  # no training counts, no groups


def test_group_boundaries():
    # many > 100, few < 20, medium otherwise (20 and 100 are medium)
    assert group_classes([101, 100, 20, 19, 0]) == {"many": [0], "medium": [1, 2], "few": [3, 4]}


@pytest.mark.parametrize("n_max,C,IF,sizes", [
    (5000, 10, 100, (8, 2, 0)), (500, 100, 100, (35, 35, 30)),
    (500, 100, 50, (41, 41, 18)), (500, 100, 10, (69, 31, 0)),
])
def test_groups_of_the_lt_cifar_conventions(n_max, C, IF, sizes):
    counts = [int(n_max * (1 / IF) ** (i / (C - 1))) for i in range(C)]
    g = group_classes(counts)
    assert (len(g["many"]), len(g["medium"]), len(g["few"])) == sizes


def test_errors_and_confusion_switch():
    acc = AccuracyAccumulator(3)
    with pytest.raises(ValueError):
        acc.update(torch.tensor([0, 3]), torch.tensor([0, 1]))
    with pytest.raises(ValueError):
        acc.update(torch.zeros(2, 5), torch.tensor([0, 1]))
    acc.update(torch.tensor([0]), torch.tensor([0]))
    acc.all_reduce()
    with pytest.raises(RuntimeError):
        acc.update(torch.tensor([0]), torch.tensor([0]))
    assert AccuracyAccumulator(2000).keep_confusion is False
    big = AccuracyAccumulator(2000)
    big.update(torch.tensor([1, 2]), torch.tensor([1, 3]))
    r = big.result()
    assert r["confusion"] is None and r["top1"] == 50.0
    assert AccuracyAccumulator(5).result()["top1"] is None  # nothing seen


# ------------------------------------------------------------------ where the errors go
# counts 500, 200 (many), 50 (medium), 10 (few); rows = true class
WHERE_COUNTS = [500, 200, 50, 10]
WHERE_CONF = [[8, 1, 1, 0],
              [3, 5, 1, 1],
              [2, 2, 4, 2],
              [4, 1, 0, 5]]


def test_headward_errors_worked_example():
    from allnc.metrics import headward_errors

    h = headward_errors(WHERE_CONF, WHERE_COUNTS)
    # errors 2, 5, 6, 5; head-ward 0, 3 (to class 0), 4 (to 0 and 1), 5 (all)
    assert h["errors"] == 18 and h["all"] == pytest.approx(100 * 12 / 18)
    assert h["per_class"] == pytest.approx([0.0, 60.0, 100 * 4 / 6, 100.0])
    assert h["groups"] == pytest.approx({"many": 100 * 3 / 7, "medium": 100 * 4 / 6, "few": 100.0})
    # evenly spread errors: class c has c larger classes of 3 others
    assert h["uniform"] == pytest.approx(100 * (2 * 0 + 5 / 3 + 6 * 2 / 3 + 5 * 1) / 18)


def test_errors_spread_evenly_are_as_head_ward_as_the_uniform_figure():
    """The defining property of ``uniform``: a confusion whose every row spreads its errors
    evenly over the other classes has exactly that head-ward share (ties included)."""
    from allnc.metrics import headward_errors

    rng = np.random.default_rng(0)
    counts = [900, 900, 300, 120, 60, 60, 25, 9]  # ties at 900 and at 60
    K = len(counts)
    per_other = rng.integers(1, 6, size=K)
    conf = np.repeat(per_other[:, None], K, axis=1)
    np.fill_diagonal(conf, rng.integers(10, 50, size=K))
    h = headward_errors(conf, counts)
    assert h["all"] == pytest.approx(h["uniform"])
    # and a classifier that sends every error to the largest class is head-ward but for that class's own
    conf2 = np.diag(np.full(K, 10))
    conf2[1:, 0] += 3
    conf2[0, 1] = 3  # the first class's errors go to its tie
    h2 = headward_errors(conf2, counts)
    assert h2["per_class"][0] == 0.0 and h2["per_class"][1] == 0.0  # class 1 ties class 0: not head-ward
    assert h2["per_class"][2:] == [100.0] * (K - 2)


def test_group_confusion_rows_are_class_balanced_shares():
    from allnc.metrics import group_confusion

    g = group_confusion(WHERE_CONF, WHERE_COUNTS)
    assert g["shares"]["many"] == pytest.approx({"many": 85.0, "medium": 10.0, "few": 5.0})
    assert g["shares"]["medium"] == pytest.approx({"many": 40.0, "medium": 40.0, "few": 20.0})
    assert g["shares"]["few"] == pytest.approx({"many": 50.0, "medium": 0.0, "few": 50.0})
    assert g["counts"]["many"] == {"many": 17, "medium": 2, "few": 1}
    assert all(sum(row.values()) == pytest.approx(100.0) for row in g["shares"].values())
    # an empty group has no row; its column is zero
    e = group_confusion([[5, 1], [2, 4]], [500, 300])
    assert e["shares"]["medium"] is None and e["shares"]["few"] is None
    assert e["shares"]["many"] == pytest.approx({"many": 100.0, "medium": 0.0, "few": 0.0})
    with pytest.raises(ValueError, match="K x K with K = 3"):
        group_confusion([[1, 0], [0, 1]], [5, 4, 3])

"""The long-tailed convention of docs/reference.md, number for number."""
import numpy as np
import pytest

from allnc.data import groups, lt_counts, lt_indices
from allnc.errors import DataError


def _group_sizes(counts):
    g = groups(counts)
    return len(g["many"]), len(g["medium"]), len(g["few"])


# --- docs/reference.md table ---------------------------------------------------------------
@pytest.mark.parametrize(
    "factor,total,counts,n_min,gsizes",
    [
        (100, 12406, [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50], 50, (8, 2, 0)),
        (50, 13996, None, 100, (9, 1, 0)),
        (10, 20431, None, 500, (10, 0, 0)),
        (200, 11203, None, 25, None),
    ],
)
def test_cifar10_lt_counts(factor, total, counts, n_min, gsizes):
    c = lt_counts(5000, 10, factor)
    assert len(c) == 10
    assert sum(c) == total
    assert c[0] == 5000 and c[-1] == n_min and min(c) == n_min
    if counts is not None:
        assert c == counts
    if gsizes is not None:
        assert _group_sizes(c) == gsizes
    assert all(a >= b for a, b in zip(c, c[1:]))


@pytest.mark.parametrize(
    "factor,total,n_min,gsizes",
    [(100, 10847, 5, (35, 35, 30)), (50, 12608, 10, (41, 41, 18)), (10, 19573, 50, (69, 31, 0))],
)
def test_cifar100_lt_counts(factor, total, n_min, gsizes):
    c = lt_counts(500, 100, factor)
    assert len(c) == 100 and c[0] == 500
    assert sum(c) == total
    assert c[-1] == n_min
    assert _group_sizes(c) == gsizes


def test_fmnist_lt_counts():
    c = lt_counts(6000, 10, 100)
    assert c == [6000, 3596, 2156, 1292, 774, 464, 278, 166, 100, 60]
    assert sum(c) == 14886


def test_exp_formula_and_balanced():
    # the formula itself, int() flooring, for an arbitrary profile
    c = lt_counts(777, 7, 13.5)
    assert c == [int(777 * (1 / 13.5) ** (i / 6)) for i in range(7)]
    assert lt_counts(500, 100, 1) == [500] * 100
    assert lt_counts(500, 1, 100) == [500]


def test_step_profile():
    assert lt_counts(5000, 10, 100, "step") == [5000] * 5 + [50] * 5
    assert lt_counts(500, 100, 10, "step") == [500] * 50 + [50] * 50
    # odd class count: the first floor(C/2) classes are the head
    assert lt_counts(60, 5, 3, "step") == [60, 60, 20, 20, 20]
    assert sum(lt_counts(5000, 10, 100, "step")) == 25250


def test_counts_bad_arguments():
    with pytest.raises(ValueError, match="imbalance_factor"):
        lt_counts(100, 10, 0.5)
    with pytest.raises(ValueError, match="kind"):
        lt_counts(100, 10, 10, "linear")


# --- the seeded selection -----------------------------------------------------------------
def _manual_np_random(targets, counts, seed):
    """The convention written with the global NumPy generator, as the original code does."""
    saved = np.random.get_state()
    try:
        np.random.seed(seed)
        out = []
        for c, n in enumerate(counts):
            idx = np.where(targets == c)[0]
            np.random.shuffle(idx)
            out.extend(idx[:n].tolist())
        return np.asarray(out)
    finally:
        np.random.set_state(saved)


@pytest.mark.parametrize("seed", [0, 1, 123])
def test_lt_indices_reproduce_np_random_seed_and_shuffle(seed):
    rs = np.random.RandomState(7)
    targets = rs.permutation(np.repeat(np.arange(10), 300))
    counts = lt_counts(300, 10, 50)
    before = np.random.get_state()[1].copy()
    got = lt_indices(targets, counts, seed=seed)
    # the global NumPy generator is untouched
    assert np.array_equal(np.random.get_state()[1], before)
    assert got.dtype == np.int64
    assert np.array_equal(got, _manual_np_random(targets, counts, seed))
    # class order, class counts, no repeats
    assert np.array_equal(targets[got], np.repeat(np.arange(10), counts))
    assert len(np.unique(got)) == len(got) == sum(counts)


def test_lt_indices_depend_only_on_within_class_order():
    # two arrangements of the same classes, same within-class order -> same within-class picks
    rs = np.random.RandomState(3)
    a = rs.permutation(np.repeat(np.arange(4), 50))
    b = np.sort(a, kind="stable")  # grouped by class, as an image folder lists them
    counts = lt_counts(50, 4, 10)
    ia, ib = lt_indices(a, counts, 0), lt_indices(b, counts, 0)
    rank_a = [np.searchsorted(np.where(a == c)[0], i) for c, i in zip(a[ia], ia)]
    rank_b = [np.searchsorted(np.where(b == c)[0], i) for c, i in zip(b[ib], ib)]
    assert rank_a == rank_b


def test_lt_indices_too_few_images_names_the_class():
    targets = np.array([0] * 10 + [1] * 3 + [2] * 8)
    with pytest.raises(DataError, match=r"'cat' \(class 1\) has 3 training images .* asks for 5"):
        lt_indices(targets, [10, 5, 2], class_names=["dog", "cat", "bird"])
    with pytest.raises(DataError, match="class 1 has 3"):
        lt_indices(targets, [10, 5, 2])


def test_lt_indices_too_few_images_gives_advice_that_works():
    # class 1 short: a larger imbalance factor asks fewer of it, and fits
    targets = np.array([0] * 50 + [1] * 10 + [2] * 40)
    with pytest.raises(DataError, match=r"class 1\) has 10 .* raise data.imbalance_factor"):
        lt_indices(targets, lt_counts(50, 3, 4), class_names=["a", "b", "c"])
    assert len(lt_indices(targets, lt_counts(50, 3, 25))) == sum(lt_counts(50, 3, 25))
    # class 0 not the largest: no factor helps (class 0 always gets n_max), so none is advised
    targets = np.array([0] * 20 + [1] * 50 + [2] * 40)
    for factor in (1.5, 10, 100):
        with pytest.raises(DataError, match="class 0\\) has 20 .*largest class must come first") as e:
            lt_indices(targets, lt_counts(50, 3, factor), class_names=["a", "b", "c"])
        assert "raise data.imbalance_factor" not in str(e.value) and "lower" not in str(e.value)


def test_lt_indices_full_counts_keep_everything():
    targets = np.array([1, 0, 1, 0, 2])
    got = lt_indices(targets, [2, 2, 1])
    assert sorted(got.tolist()) == [0, 1, 2, 3, 4]


# --- groups --------------------------------------------------------------------------------
def test_groups_boundaries_and_empty_groups():
    g = groups([101, 100, 20, 19, 0, 500])
    assert g == {"many": [0, 5], "medium": [1, 2], "few": [3, 4]}
    assert groups([5000, 200]) == {"many": [0, 1], "medium": [], "few": []}

"""ClassAwareSampler: promised class frequencies, permutations, ranks, epochs, seeds."""
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from allnc.data import ClassAwareSampler
from allnc.errors import ConfigError

COUNTS = [400, 100, 25, 5]
# chi-square critical values at p = 0.001 (df = 3 and df = 4): with fixed seeds the tests
# are deterministic, and a correct sampler fails them with probability 0.001 per seed
CHI2_DF3 = 16.27
CHI2_DF4 = 18.47


def _targets(counts=COUNTS, seed=0):
    return np.random.RandomState(seed).permutation(np.repeat(np.arange(len(counts)), counts))


def _chi2(observed, expected):
    observed, expected = np.asarray(observed, float), np.asarray(expected, float)
    return float(((observed - expected) ** 2 / expected).sum())


@pytest.mark.parametrize(
    "mode,weights",
    [
        ("balanced", [1, 1, 1, 1]),
        ("sqrt", np.sqrt(COUNTS)),
        ("reversed", [400 / n for n in COUNTS]),
        ("power 0.8", np.power(COUNTS, 0.8)),  # GLMC's re-sampling at q = 0.2
        ("power 1", COUNTS),  # instance-proportional, with replacement
    ],
)
def test_modes_draw_their_promised_class_frequencies(mode, weights):
    t = _targets()
    n_draws = 20000
    mode, _, power = mode.partition(" ")
    s = ClassAwareSampler(t, mode, batch_size=100, seed=3, num_samples=n_draws, power=float(power or 1))
    promised = np.asarray(weights, float) / np.sum(weights)
    assert np.allclose(s.class_probabilities(), promised)
    idx = s.global_indices(0).numpy()
    assert len(idx) == n_draws
    observed = np.bincount(t[idx], minlength=4)
    assert _chi2(observed, promised * n_draws) < CHI2_DF3
    # within the rarest class, each of its 5 images is drawn uniformly
    rare = idx[t[idx] == 3]
    members = np.flatnonzero(t == 3)
    per_image = np.array([(rare == m).sum() for m in members])
    assert per_image.sum() == len(rare)
    assert _chi2(per_image, np.full(5, len(rare) / 5)) < CHI2_DF4


def test_instance_mode_is_a_permutation():
    t = _targets()
    s = ClassAwareSampler(t, "instance", batch_size=64, drop_last=False)
    idx = s.global_indices(0).numpy()
    assert sorted(idx.tolist()) == list(range(len(t)))
    assert np.allclose(s.class_probabilities(), np.array(COUNTS) / sum(COUNTS))
    d = ClassAwareSampler(t, "instance", batch_size=64, drop_last=True)
    kept = d.global_indices(0).numpy()
    assert len(kept) == (len(t) // 64) * 64 and len(set(kept.tolist())) == len(kept)
    assert np.array_equal(kept, idx[: len(kept)])


@pytest.mark.parametrize("mode", ["instance", "balanced", "sqrt", "reversed", "class_aware"])
@pytest.mark.parametrize("world_size", [2, 4])
def test_ranks_together_see_the_one_process_batches(mode, world_size):
    t = _targets()
    b = 32
    one = ClassAwareSampler(t, mode, batch_size=b, seed=5)
    one.set_epoch(2)
    glob = torch.tensor(list(one))
    assert len(glob) == len(one) == (len(t) // b) * b
    ranks = []
    for r in range(world_size):
        s = ClassAwareSampler(t, mode, batch_size=b, seed=5, rank=r, world_size=world_size)
        s.set_epoch(2)
        mine = torch.tensor(list(s))
        assert len(mine) == len(s) == len(glob) // world_size
        ranks.append(mine.view(-1, b // world_size))
    # global batch k = rank 0's chunk k, then rank 1's chunk k, ...
    assert torch.equal(torch.cat(ranks, 1).reshape(-1), glob)
    # as DataLoaders with the per-rank batch size
    ds = TensorDataset(torch.arange(len(t)))
    loaders = [DataLoader(ds, batch_size=b // world_size,
                          sampler=ClassAwareSampler(t, mode, b, 5, r, world_size)) for r in range(world_size)]
    first = torch.cat([next(iter(ld))[0] for ld in loaders])
    assert torch.equal(first, ClassAwareSampler(t, mode, b, 5).global_indices(0)[:b])


def test_no_drop_last_tail_is_split_contiguously():
    t = _targets()  # 530 samples, batch 64: 8 full batches and 18 left
    one = ClassAwareSampler(t, "instance", batch_size=64, drop_last=False)
    glob = one.global_indices(0)
    parts = [ClassAwareSampler(t, "instance", 64, rank=r, world_size=4, drop_last=False) for r in range(4)]
    lens = [len(p) for p in parts]
    assert lens == [8 * 16 + 16, 8 * 16 + 2, 8 * 16, 8 * 16] and sum(lens) == len(t)
    assert [len(list(p)) for p in parts] == lens
    tail = torch.cat([torch.tensor(list(p))[8 * 16:] for p in parts])
    assert torch.equal(tail, glob[8 * 64:])
    assert one.num_batches() == 9


def test_epochs_and_seeds_are_deterministic():
    t = _targets()
    for mode in ("instance", "reversed"):
        a = ClassAwareSampler(t, mode, batch_size=16, seed=1)
        b = ClassAwareSampler(t, mode, batch_size=16, seed=1)
        a.set_epoch(4)
        b.set_epoch(4)
        assert list(a) == list(b)
        assert list(a) == list(a)  # iterating again gives the same epoch
        a.set_epoch(5)
        e5 = list(a)
        assert e5 != list(b)
        assert torch.equal(torch.tensor(e5), b.global_indices(5))
        c = ClassAwareSampler(t, mode, batch_size=16, seed=2)
        c.set_epoch(4)
        assert list(c) != list(b)


def test_argument_errors():
    t = _targets()
    with pytest.raises(ConfigError, match="not divisible by the 3 processes"):
        ClassAwareSampler(t, "instance", batch_size=32, world_size=3)
    with pytest.raises(ConfigError, match="not one of"):
        ClassAwareSampler(t, "uniform")
    with pytest.raises(ConfigError, match="larger than the 530 samples"):
        ClassAwareSampler(t, "instance", batch_size=1024)
    with pytest.raises(ValueError, match="rank 2"):
        ClassAwareSampler(t, "instance", batch_size=32, rank=2, world_size=2)


def test_empty_class_is_never_drawn():
    t = np.array([0] * 10 + [2] * 5)  # class 1 has no image
    s = ClassAwareSampler(t, "reversed", batch_size=5, num_classes=3)
    p = s.class_probabilities()
    assert p[1] == 0 and np.allclose(p[[0, 2]], [1 / 3, 2 / 3])
    assert set(t[s.global_indices(0).numpy()].tolist()) <= {0, 2}


def test_power_mode_is_the_general_form_of_the_named_ones():
    """n_k ** p: p = 0 is balanced, 0.5 square-root, -1 reversed (the same probabilities,
    and with the same seed the same draws)."""
    t = _targets()
    for mode, p in (("balanced", 0.0), ("sqrt", 0.5), ("reversed", -1.0)):
        named, general = ClassAwareSampler(t, mode, 16, seed=4), ClassAwareSampler(t, "power", 16, seed=4, power=p)
        assert np.allclose(named.class_probabilities(), general.class_probabilities(), rtol=1e-12)
        assert torch.equal(named.global_indices(2), general.global_indices(2))
    with pytest.raises(ConfigError, match="finite"):
        ClassAwareSampler(t, "power", 16, power=float("nan"))


def test_class_aware_mode_cycles_classes_and_images_in_runs_of_four():
    """The released class-aware sampler: turns of 4 images of one class; every K turns visit
    each class once; within a class, each pass over its images is a permutation of them."""
    from allnc.data.samplers import CLASS_AWARE_RUN as RUN

    t = _targets()  # 530 images: 400, 100, 25, 5
    s = ClassAwareSampler(t, "class_aware", batch_size=16, seed=2)
    idx = s.global_indices(0).numpy()
    assert len(idx) == 528  # floor(530 / 16) batches of 16
    full = s._class_aware_order(torch.Generator().manual_seed(7)).numpy()
    assert len(full) == 530
    cls = t[full]
    turns = cls[: len(cls) // RUN * RUN].reshape(-1, RUN)
    assert (turns == turns[:, :1]).all()  # four of a class in a row
    k = len(COUNTS)
    for j in range(len(turns) // k):
        assert sorted(turns[j * k:(j + 1) * k, 0].tolist()) == list(range(k))  # a class cycle
    drawn = np.bincount(cls, minlength=k)
    assert drawn.max() - drawn.min() <= RUN
    for c, n_c in enumerate(COUNTS):
        seq = full[cls == c]
        for start in range(0, len(seq) - n_c + 1, n_c):  # each whole pass is a permutation of the class
            assert sorted(seq[start:start + n_c].tolist()) == sorted(np.flatnonzero(t == c).tolist())
        assert len(set(seq[:n_c].tolist())) == min(n_c, len(seq))
    # the same seed and epoch, the same order; another epoch, another
    assert torch.equal(s.global_indices(3), ClassAwareSampler(t, "class_aware", 16, seed=2).global_indices(3))
    assert not torch.equal(s.global_indices(3), s.global_indices(4))
    assert np.allclose(s.class_probabilities(), 0.25)


def test_class_aware_mode_skips_an_empty_class():
    t = np.array([0] * 10 + [2] * 5)
    s = ClassAwareSampler(t, "class_aware", batch_size=5, num_classes=3)
    assert set(t[s.global_indices(0).numpy()].tolist()) == {0, 2}

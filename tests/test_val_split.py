"""The balanced validation split (data.val_per_class): disjoint from training and test,
balanced, deterministic, the long-tailed subset untouched where the tail left images out,
and a run that never reads the test set."""
import json

import numpy as np
import pytest

from allnc.config import load_config
from allnc.data import build_data, lt_counts, lt_indices
from allnc.data.longtail import val_split
from allnc.engine import loaders
from allnc.engine.trainer import Trainer
from allnc.errors import DataError


def _targets(per_class=60, k=10, seed=3):
    return np.random.RandomState(seed).permutation(np.repeat(np.arange(k), per_class))


def test_val_split_is_balanced_disjoint_and_deterministic():
    t = _targets()
    counts = lt_counts(60, 10, 10)  # 60 ... 6
    kept = lt_indices(t, counts, seed=0)
    val, train, moved = val_split(t, kept, 5, seed=1)
    assert np.bincount(t[val], minlength=10).tolist() == [5] * 10
    assert not set(val) & set(train) and len(set(val)) == len(val)
    # the head class keeps all 60 of its images in the long tail: its 5 come from training
    assert moved == {0: 5}
    assert np.bincount(t[train], minlength=10).tolist() == [55] + counts[1:]
    # every other class trains on exactly the reference subset, in the same order
    for c in range(1, 10):
        assert t[train][t[train] == c].tolist() == t[kept][t[kept] == c].tolist()
        assert (train[t[train] == c] == kept[t[kept] == c]).all()
    # the moved images are the last ones of the head class's seeded selection
    head = kept[t[kept] == 0]
    assert set(head[-5:]) <= set(val) and set(head[:-5]) <= set(train)
    v2, tr2, _ = val_split(t, kept, 5, seed=1)
    assert (v2 == val).all() and (tr2 == train).all()
    v3, _, _ = val_split(t, kept, 5, seed=2)
    assert not (v3 == val).all()


def test_val_split_refuses_to_empty_a_class():
    t = _targets(per_class=6)
    kept = lt_indices(t, [6] * 10, seed=0)  # nothing left out anywhere
    with pytest.raises(DataError, match="too few for 6 validation images"):
        val_split(t, kept, 6)


def test_bundle_with_validation(tiny_learnable_fmnist):
    base = ["data.imbalance_factor=10", f"data.root={tiny_learnable_fmnist}"]
    plain = build_data(load_config("fmnist_lt_ce", base))
    b = build_data(load_config("fmnist_lt_ce", base + ["data.val_per_class=4"]))
    ref = lt_counts(60, 10, 10)
    assert plain.class_counts.tolist() == ref and plain.val is None  # off: the reference subset
    assert b.class_counts.tolist() == [56] + ref[1:] and b.val_moved == {0: 4}
    assert np.bincount(b.val.targets, minlength=10).tolist() == [4] * 10
    # disjoint from training (by source index) and from the test set (by content)
    assert not set(b.val.origin.tolist()) & set(b.train.origin.tolist())
    test_imgs = {im.tobytes() for im in b.test.images}
    assert not any(im.tobytes() in test_imgs for im in b.val.images)
    assert "validation 4/class" in b.label


@pytest.fixture
def splits_read(monkeypatch) -> list[str]:
    """The evaluated splits, in order: every call of the evaluator's split iterator."""
    seen: list[str] = []
    orig = loaders.iter_eval

    def spy(cfg, bundle, split_name, *a, **k):
        seen.append(split_name)
        return orig(cfg, bundle, split_name, *a, **k)

    monkeypatch.setattr("allnc.engine.evaluate.iter_eval", spy)
    return seen


def test_a_run_without_the_test_set_never_reads_it(tiny_learnable_fmnist, tmp_path, splits_read, capsys):
    seen = splits_read
    cfg = load_config("fmnist_lt_ce", [f"data.root={tiny_learnable_fmnist}", "data.imbalance_factor=10", "device=cpu",
                                       "train.progress=false", "model.width=8", "train.batch_size=32", "train.epochs=2",
                                       "train.eval_every=1", "data.val_per_class=4", "train.eval_test=false"])
    m = Trainer(cfg, tmp_path / "r").fit()
    assert "test" not in seen and seen.count("val") == 2  # two epochs; the final metrics reuse the last
    saved = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert saved["test_evaluated"] is False and "top1" not in saved and 0 <= saved["val"]["top1"] <= 100
    assert saved["val_moved_from_train"] == {"0": 4}
    assert m["val"] == saved["val"] and m["test_evaluated"] is False  # what fit returns is what it wrote
    hist = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert all("val_top1" in h and "test_top1" not in h for h in hist)
    # a later command that reads the test set of such a run says so, once
    from allnc.cli import main as cli_main

    assert cli_main(["eval", str(tmp_path / "r"), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert err.count("allnc: note: the run was trained with train.eval_test=false") == 1


def test_eval_test_off_without_a_validation_split_evaluates_nothing(tiny_learnable_fmnist, tmp_path, splits_read, capsys):
    """A backbone trained for a second stage only (the device suite's rerun of a source that
    has its results file): no split is read, the run says so, and its metrics hold no figure."""
    from allnc.cli import main as cli_main

    seen = splits_read
    assert cli_main(["train", "--config", "fmnist_lt_ce", "--out", str(tmp_path / "r"), f"data.root={tiny_learnable_fmnist}",
                     "data.imbalance_factor=10", "device=cpu", "train.progress=false", "model.width=8",
                     "train.batch_size=32", "train.epochs=1", "train.eval_test=false"]) == 0
    assert seen == []
    saved = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert saved["test_evaluated"] is False and "top1" not in saved and "val" not in saved
    out = capsys.readouterr().out
    assert "this run evaluates nothing" in out and "nothing evaluated" in out

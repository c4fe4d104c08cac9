"""Edge cases of data and run directories found by review: each stops with one clear line
before any work is lost, or does what its message advises."""
import numpy as np
import pytest
from omegaconf import OmegaConf

from allnc.config import default_config, load_config
from allnc.data import build_data, lt_counts
from allnc.engine.trainer import Trainer
from allnc.errors import ConfigError, DataError, RunDirError

FAST = ["data.imbalance_factor=10", "device=cpu", "train.progress=false", "model.width=8", "train.batch_size=8", "data.num_workers=0",
        "train.logger=none"]


def _folder_cfg(root, **data):
    cfg = default_config()
    for k, v in {"name": "imagefolder", "root": str(root), "imbalance_factor": 1, **data}.items():
        OmegaConf.update(cfg, f"data.{k}", v)
    return cfg


def _images(n, seed=0):
    return np.random.RandomState(seed).randint(0, 256, size=(n, 12, 12, 3)).astype(np.uint8)


def test_overwrite_never_deletes_files_that_are_not_a_runs(tiny_learnable_fmnist, tmp_path):
    out = tmp_path / "proj"
    (out / "src").mkdir(parents=True)
    (out / "src" / "important.py").write_text("x")
    (out / "NOTES.md").write_text("n")
    (out / "config.yaml").write_text("_base_: fmnist_lt_ce\n")  # looks like a run's, is the user's
    cfg = load_config("fmnist_lt_ce", [f"data.root={tiny_learnable_fmnist}", "train.epochs=1", *FAST])
    with pytest.raises(RunDirError, match=r"not a run's \(NOTES.md, src\); nothing was deleted"):
        Trainer(cfg, out, overwrite=True)
    assert (out / "src" / "important.py").read_text() == "x" and (out / "NOTES.md").exists()
    assert (out / "config.yaml").read_text() == "_base_: fmnist_lt_ce\n"


def test_an_empty_test_split_and_a_class_without_training_images_stop_before_training(tmp_path, tiny_image_folder,
                                                                                      tiny_idx):
    tiny_image_folder(tmp_path / "a", "train", _images(6), np.array([0, 0, 0, 1, 1, 1]), ["x", "y"])
    for c in ("x", "y"):
        (tmp_path / "a" / "test" / c).mkdir(parents=True)
    with pytest.raises(DataError, match="test split of .* holds no image"):
        build_data(_folder_cfg(tmp_path / "a"))
    # Fashion-MNIST's class list is fixed: a set without any Ankle boot (label 9) in training
    fm = tmp_path / "fm"
    fm.mkdir()
    rng = np.random.RandomState(0)
    for stem, y in (("train", np.arange(36) % 9), ("t10k", np.arange(20) % 10)):
        tiny_idx(fm / f"{stem}-images-idx3-ubyte.gz", rng.randint(0, 256, (len(y), 28, 28)).astype(np.uint8), True)
        tiny_idx(fm / f"{stem}-labels-idx1-ubyte.gz", y.astype(np.uint8), True)
    cfg = default_config()
    OmegaConf.update(cfg, "data.root", str(fm))
    OmegaConf.update(cfg, "data.imbalance_factor", 1)
    with pytest.raises(DataError, match=r"'Ankle boot' \(class 9\) has no training image"):
        build_data(cfg)


def test_the_advised_largest_imbalance_factor_is_accepted(tmp_path, tiny_image_folder):
    # n_max 49: int(49 * (1/49)) is 0 in floating point, so 49 itself leaves the last class empty
    assert min(lt_counts(49, 2, 49.0)) == 0
    tiny_image_folder(tmp_path, "train", _images(59), np.array([0] * 49 + [1] * 10), ["x", "y"])
    tiny_image_folder(tmp_path, "test", _images(2), np.array([0, 1]), ["x", "y"])
    with pytest.raises(ConfigError, match=r"use an imbalance factor below 49 \(for example (\S+)\)") as e:
        build_data(_folder_cfg(tmp_path, imbalance_factor=100))
    advised = float(str(e.value).split("for example ")[1].split(")")[0])
    assert build_data(_folder_cfg(tmp_path, imbalance_factor=advised)).class_counts.tolist() == [49, 1]
    # the largest lt_seed the config accepts also draws a validation split
    b = build_data(_folder_cfg(tmp_path, val_per_class=1, lt_seed=2**32 - 1))
    assert b.val is not None and len(b.val.targets) == 2


def test_nc_max_samples_below_the_class_count_is_refused_at_the_start(tiny_learnable_fmnist, tmp_path):
    cfg = load_config("fmnist_lt_ce", [f"data.root={tiny_learnable_fmnist}", "train.epochs=3", "nc.every=2",
                                       "nc.max_samples=2", *FAST])
    with pytest.raises(ConfigError, match=r"nc.max_samples=2 is below the 10 classes"):
        Trainer(cfg, tmp_path / "r")


def test_a_resume_knows_its_checkpoint_before_training_starts(tiny_learnable_fmnist, tmp_path):
    """The advice after an interrupt during a resume's start-up reads last_ckpt_epoch."""
    cfg = load_config("fmnist_lt_ce", [f"data.root={tiny_learnable_fmnist}", "train.epochs=1", *FAST])
    Trainer(cfg, tmp_path / "r").fit()
    t = Trainer(None, tmp_path / "r", resume=True)
    try:
        assert t.last_ckpt_epoch == 1
    finally:
        t.release()


def test_test_images_of_another_size_than_the_training_images_are_refused(tmp_path, tiny_image_folder):
    tiny_image_folder(tmp_path, "train", _images(4), np.array([0, 0, 1, 1]), ["x", "y"])  # 12 x 12
    big = np.random.RandomState(1).randint(0, 256, size=(2, 20, 20, 3)).astype(np.uint8)
    tiny_image_folder(tmp_path, "test", big, np.array([0, 1]), ["x", "y"])
    with pytest.raises(DataError, match=r"training images .* are 12x12 but its test images are 20x20.*"
                                        r"data.small_size=12"):
        build_data(_folder_cfg(tmp_path))
    b = build_data(_folder_cfg(tmp_path, small_size=12))  # the advice works
    assert b.train.images.shape[1:3] == b.test.images.shape[1:3] == (12, 12)


def test_a_mistyped_resume_leaves_nothing_behind(tmp_path):
    with pytest.raises(RunDirError, match="--resume: no run in"):
        Trainer(None, tmp_path / "nothere", resume=True)
    assert not (tmp_path / "nothere").exists()


def test_a_list_file_run_is_not_labelled_with_the_ignored_imbalance_factor():
    from allnc.report.runreport import run_label

    assert "IF 100" in run_label({"data": {"name": "fmnist", "imbalance_factor": 100}})
    label = run_label({"data": {"name": "listfile", "imbalance_factor": 100}})
    assert "IF" not in label and "listfile (as listed)" in label

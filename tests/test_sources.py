"""Sources in their real on-disk formats, format detection, errors, and build_data."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from allnc.config import default_config
from allnc.data import build_data, lt_counts, lt_indices, make_dataset
from allnc.data import sources as S
from allnc.data.augment import build_transform
from allnc.errors import DataError


def _cfg(**data):
    cfg = default_config()
    for k, v in data.items():
        OmegaConf.update(cfg, f"data.{k}", v)
    return cfg


# ------------------------------------------------------------------------------ CIFAR
def test_cifar10_pickles_pixels_labels_and_classes(tmp_path, tiny_cifar_pickles):
    w = tiny_cifar_pickles(tmp_path, 10, per_class=3, test_per_class=2)
    src = S.load_cifar(10, str(tmp_path))
    assert src.fmt == "pickle" and src.name == "CIFAR-10"
    assert np.array_equal(src.train.images, w["train_x"])
    assert np.array_equal(src.train.targets, w["train_y"])
    assert np.array_equal(src.test.images, w["test_x"])
    assert np.array_equal(src.test.targets, w["test_y"])
    assert src.train.classes == w["classes"] and src.train.targets.dtype == np.int64
    img = src.train.load(4)
    assert img.mode == "RGB" and img.size == (32, 32)
    assert np.array_equal(np.asarray(img), w["train_x"][4])
    # root may also be the batches folder itself
    again = S.load_cifar(10, str(w["folder"]))
    assert np.array_equal(again.train.images, w["train_x"])


def test_cifar100_pickles(tmp_path, tiny_cifar_pickles):
    w = tiny_cifar_pickles(tmp_path, 100, per_class=1, test_per_class=1)
    src = S.load_cifar(100, str(tmp_path))
    assert src.name == "CIFAR-100" and src.train.num_classes == 100
    assert np.array_equal(src.train.images, w["train_x"])
    assert np.array_equal(src.test.targets, w["test_y"])


def test_cifar_image_folder_detected_and_decoded(tmp_path, tiny_cifar_pickles, tiny_image_folder):
    w = tiny_cifar_pickles(tmp_path / "pk", 10, per_class=2, test_per_class=1)
    root = tmp_path / "folder"
    tiny_image_folder(root, "train", w["train_x"], w["train_y"], w["classes"])
    tiny_image_folder(root, "test", w["test_x"], w["test_y"], w["classes"])
    src = S.load_cifar(10, str(root))
    assert src.fmt == "folder" and "image folder" in src.where
    # grouped by class (sorted names), original order within each class
    order = np.argsort(w["train_y"], kind="stable")
    assert np.array_equal(src.train.targets, w["train_y"][order])
    assert np.array_equal(src.train.images, w["train_x"][order])  # PNG is lossless
    assert src.train.classes == w["classes"]


def test_cifar_pickles_win_over_folders(tmp_path, tiny_cifar_pickles):
    tiny_cifar_pickles(tmp_path, 10, per_class=1, test_per_class=1)
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "test" / "a").mkdir(parents=True)
    assert S.load_cifar(10, str(tmp_path)).fmt == "pickle"


def test_cifar_folder_with_wrong_class_count(tmp_path, tiny_image_folder):
    x = np.zeros((3, 32, 32, 3), np.uint8)
    for split in ("train", "test"):
        tiny_image_folder(tmp_path, split, x, np.array([0, 1, 2]), ["a", "b", "c"])
    with pytest.raises(DataError, match="3 class folders, not the 10"):
        S.load_cifar(10, str(tmp_path))


def test_cifar_missing_says_where_it_looked_and_how_to_get_it(tmp_path):
    root = tmp_path / "nothing"
    with pytest.raises(DataError) as e:
        S.load_cifar(10, str(root))
    msg = str(e.value)
    assert str(root / "cifar-10-batches-py") in msg and f"{root}/train/<class>/" in msg
    assert "data.download=true" in msg and "data.root=" in msg
    assert "\n" not in msg


def test_cifar_download_uses_torchvision(tmp_path, monkeypatch, tiny_cifar_pickles):
    import torchvision

    calls = []

    class FakeCIFAR10:  # writes what torchvision's download would leave behind
        def __init__(self, root, train=True, download=False):
            calls.append((root, train, download))
            tiny_cifar_pickles(tmp_path / "dl", 10, per_class=1, test_per_class=1)

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    src = S.load_cifar(10, str(tmp_path / "dl"), download=True)
    assert calls and all(c[2] for c in calls) and src.fmt == "download"
    assert len(src.train) == 10


def test_cifar_corrupt_pickle_names_the_file(tmp_path, tiny_cifar_pickles):
    w = tiny_cifar_pickles(tmp_path, 10, per_class=1, test_per_class=1)
    bad = w["folder"] / "data_batch_3"
    bad.write_bytes(bad.read_bytes()[:50])
    with pytest.raises(DataError, match="data_batch_3"):
        S.load_cifar(10, str(tmp_path))


# -------------------------------------------------------------------------- Fashion-MNIST
def test_fmnist_gzipped_idx(tmp_path, tiny_fmnist):
    w = tiny_fmnist(tmp_path, gz=True)
    src = S.load_fmnist(str(tmp_path))
    assert src.train.mode == "L" and src.train.images.shape == (40, 28, 28, 1)
    assert np.array_equal(src.train.images[..., 0], w["train_x"])
    assert np.array_equal(src.train.targets, w["train_y"])
    assert np.array_equal(src.test.images[..., 0], w["test_x"])
    assert src.train.classes[0] == "T-shirt/top" and len(src.train.classes) == 10
    img = src.test.load(3)
    assert img.mode == "L" and np.array_equal(np.asarray(img), w["test_x"][3])


def test_fmnist_plain_and_torchvision_layout(tmp_path, tiny_fmnist):
    w = tiny_fmnist(tmp_path / "plain", gz=False)
    assert np.array_equal(S.load_fmnist(str(tmp_path / "plain")).train.targets, w["train_y"])
    w2 = tiny_fmnist(tmp_path / "tv" / "FashionMNIST" / "raw", gz=True, seed=1)
    src = S.load_fmnist(str(tmp_path / "tv"))
    assert np.array_equal(src.train.images[..., 0], w2["train_x"])


def test_idx_truncated_corrupt_and_bad_magic_name_the_file(tmp_path, tiny_fmnist, tiny_idx):
    tiny_fmnist(tmp_path, gz=False)
    f = tmp_path / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.*truncated"):
        S.load_fmnist(str(tmp_path))
    # bad magic: a label file where an image file belongs
    tiny_idx(f, np.zeros(5, np.uint8), gz=False)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte has magic number 0x00000801, not 0x00000803"):
        S.load_fmnist(str(tmp_path))
    # corrupt gzip stream
    g = tmp_path / "gz"
    tiny_fmnist(g, gz=True)
    lab = g / "t10k-labels-idx1-ubyte.gz"
    raw = lab.read_bytes()
    lab.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz is corrupt or truncated"):
        S.load_fmnist(str(g))


def test_fmnist_missing_file_and_missing_data(tmp_path, tiny_fmnist):
    tiny_fmnist(tmp_path, gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        S.load_fmnist(str(tmp_path))
    with pytest.raises(DataError, match=f"in {tmp_path / 'empty'}.*dataset-fashion-mnist.*data.download=true"):
        S.load_fmnist(str(tmp_path / "empty"))


# --------------------------------------------------------------------------- image folders
def _rgb(n, h, w, seed=0):
    return np.random.RandomState(seed).randint(0, 256, size=(n, h, w, 3)).astype(np.uint8)


def test_small_folder_in_memory_sorted_by_name(tmp_path, tiny_image_folder):
    x = _rgb(6, 16, 12)
    y = np.array([1, 0, 1, 0, 1, 1])
    tiny_image_folder(tmp_path, "train", x, y, ["zebra", "apple"])  # classes sort: apple, zebra
    tiny_image_folder(tmp_path, "test", x[:2], y[:2], ["zebra", "apple"])
    # a file whose name sorts first although written last
    Image.fromarray(x[0]).save(tmp_path / "train" / "apple" / "0000a.png")
    (tmp_path / "train" / "apple" / "notes.txt").write_text("not an image")
    src = S.load_imagefolder(str(tmp_path))
    assert src.train.classes == ["apple", "zebra"] and src.train.in_memory
    assert src.train.images.shape == (7, 16, 12, 3)
    # apple = old class 1: files 0000, 0000a, 0001, 0002, 0003 ; zebra = old class 0: 0000, 0001
    expect = [x[0], x[0], x[2], x[4], x[5], x[1], x[3]]
    assert np.array_equal(src.train.images, np.stack(expect))
    assert src.train.targets.tolist() == [0, 0, 0, 0, 0, 1, 1]
    assert src.train.paths is None


def test_grey_folder_is_mode_L(tmp_path, tiny_image_folder):
    x = _rgb(4, 8, 8)[..., :1]
    tiny_image_folder(tmp_path, "train", x, np.array([0, 1, 0, 1]), ["a", "b"])
    tiny_image_folder(tmp_path, "test", x, np.array([0, 1, 0, 1]), ["a", "b"])
    src = S.load_imagefolder(str(tmp_path))
    assert src.train.mode == "L" and src.train.images.shape == (4, 8, 8, 1)
    assert np.array_equal(src.train.images[:, :, :, 0], x[[0, 2, 1, 3], :, :, 0])


def _smooth(n, h, w):
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([np.stack([(yy * 3 + k * 40) % 256, (xx * 3) % 256, (yy + xx + k * 20) % 256], -1)
                     for k in range(n)]).astype(np.uint8)


def test_large_folder_stays_on_disk(tmp_path, tiny_image_folder):
    x = _smooth(3, 70, 80)
    tiny_image_folder(tmp_path, "train", x, np.array([0, 1, 1]), ["a", "b"], ext="jpg")
    tiny_image_folder(tmp_path, "test", x[:1], np.array([0]), ["a", "b"], ext="jpg")
    src = S.load_imagefolder(str(tmp_path))
    assert not src.train.in_memory and len(src.train.paths) == 3
    assert src.test.counts().tolist() == [1, 0]
    img = src.train.load(2)
    assert img.size == (80, 70) and img.mode == "RGB"
    assert np.abs(np.asarray(img).astype(int) - x[2]).mean() < 8  # JPEG, lossy


def test_corrupt_image_names_the_file(tmp_path, tiny_image_folder):
    x = _rgb(4, 8, 8)
    tiny_image_folder(tmp_path, "train", x, np.array([0, 0, 1, 1]), ["a", "b"])
    tiny_image_folder(tmp_path, "test", x, np.array([0, 0, 1, 1]), ["a", "b"])
    bad = tmp_path / "train" / "b" / "0001.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=f"cannot read image {bad}"):
        S.load_imagefolder(str(tmp_path))


def test_corrupt_large_image_fails_at_load_naming_the_file(tmp_path, tiny_image_folder):
    x = _rgb(2, 70, 70)
    tiny_image_folder(tmp_path, "train", x, np.array([0, 0]), ["a"], ext="jpg")
    tiny_image_folder(tmp_path, "test", x, np.array([0, 0]), ["a"], ext="jpg")
    bad = tmp_path / "test" / "a" / "0001.jpg"
    bad.write_bytes(bad.read_bytes()[:30])
    src = S.load_imagefolder(str(tmp_path))
    with pytest.raises(DataError, match=f"cannot read image {bad}"):
        src.test.load(1)


def test_small_images_of_different_sizes(tmp_path, tiny_image_folder):
    tiny_image_folder(tmp_path, "train", _rgb(2, 8, 8), np.array([0, 0]), ["a"])
    tiny_image_folder(tmp_path, "test", _rgb(1, 8, 8), np.array([0]), ["a"])
    Image.fromarray(_rgb(1, 9, 8)[0]).save(tmp_path / "train" / "a" / "0002.png")
    with pytest.raises(DataError, match=r"0002.png is 8x9 .* one size; set data.small_size=8 to resize"):
        S.load_imagefolder(str(tmp_path))


def test_small_size_resizes_every_image_bilinearly(tmp_path, tiny_image_folder):
    """data.small_size decodes each image at that size, mixed or large: each array is Pillow's
    bilinear resize of that image, images already of that size are kept bit for bit, and the
    .npz cache of one size is never read for another."""
    tiny_image_folder(tmp_path, "train", _smooth(2, 8, 8), np.array([0, 1]), ["a", "b"])
    tiny_image_folder(tmp_path, "test", _smooth(1, 8, 8), np.array([1]), ["a", "b"])
    big = _smooth(1, 100, 120)[0]
    Image.fromarray(big).save(tmp_path / "train" / "b" / "0009.png")
    cache = str(tmp_path / "cache")
    src = S.load_imagefolder(str(tmp_path), cache_dir=cache, small_size=8)
    assert src.train.images.shape == (3, 8, 8, 3) and src.test.images.shape == (1, 8, 8, 3)
    want = np.asarray(Image.fromarray(big).resize((8, 8), Image.BILINEAR))
    assert np.array_equal(src.train.images[2], want)
    with Image.open(tmp_path / "train" / "a" / "0000.png") as im:
        assert np.array_equal(src.train.images[0], np.asarray(im.convert("RGB")))
    other = S.load_imagefolder(str(tmp_path), cache_dir=cache, small_size=4)
    assert other.train.images.shape == (3, 4, 4, 3)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 4
    # a folder of only large images, which would stay on disk, is decoded into memory
    tiny_image_folder(tmp_path / "large", "train", _smooth(2, 70, 80), np.array([0, 1]), ["a", "b"])
    tiny_image_folder(tmp_path / "large", "test", _smooth(1, 70, 80), np.array([0]), ["a", "b"])
    assert not S.load_imagefolder(str(tmp_path / "large")).train.in_memory
    assert S.load_imagefolder(str(tmp_path / "large"), small_size=16).train.images.shape == (2, 16, 16, 3)


def test_one_class_is_refused_before_training(tmp_path, tiny_image_folder):
    tiny_image_folder(tmp_path, "train", _rgb(3, 8, 8), np.array([0, 0, 0]), ["cat"])
    tiny_image_folder(tmp_path, "test", _rgb(1, 8, 8), np.array([0]), ["cat"])
    with pytest.raises(DataError, match=r"has 1 class \('cat'\); a classifier needs at least two"):
        build_data(_cfg(name="imagefolder", root=str(tmp_path), imbalance_factor=1))
    (tmp_path / "train" / "dog").mkdir()
    Image.fromarray(_rgb(1, 8, 8)[0]).save(tmp_path / "train" / "dog" / "0.png")
    assert build_data(_cfg(name="imagefolder", root=str(tmp_path), imbalance_factor=1)).num_classes == 2


def test_small_size_is_checked_and_reaches_the_bundle(tmp_path, tiny_image_folder):
    from allnc.config import validate
    from allnc.errors import ConfigError

    tiny_image_folder(tmp_path, "train", _smooth(4, 20, 30), np.array([0, 0, 1, 1]), ["a", "b"])
    tiny_image_folder(tmp_path, "test", _smooth(2, 20, 30), np.array([0, 1]), ["a", "b"])
    b = build_data(_cfg(name="imagefolder", root=str(tmp_path), imbalance_factor=1, small_size=12))
    assert b.small and b.image_hw == (12, 12)
    for bad, msg in (({"name": "imagefolder", "small_size": 0}, r"small_size=0 is outside \[1, 4096\] \(a size in pixels"),
                     ({"name": "cifar10", "small_size": 32}, "not data.name=cifar10")):
        with pytest.raises(ConfigError, match=msg):
            validate(_cfg(**bad))


def test_folder_errors(tmp_path, tiny_image_folder):
    with pytest.raises(DataError, match="does not hold train/ and test/"):
        S.load_imagefolder(str(tmp_path))
    with pytest.raises(DataError, match="needs data.root"):
        S.load_imagefolder(None)
    tiny_image_folder(tmp_path, "train", _rgb(1, 8, 8), np.array([0]), ["a"])
    tiny_image_folder(tmp_path, "test", _rgb(1, 8, 8), np.array([0]), ["x"])
    with pytest.raises(DataError, match="class folder 'x' that train/ does not have"):
        S.load_imagefolder(str(tmp_path))
    (tmp_path / "train" / "empty").mkdir()
    with pytest.raises(DataError, match="empty holds no images"):
        S.load_imagefolder(str(tmp_path))


def test_npz_cache_is_written_and_used(tmp_path, tiny_image_folder, monkeypatch):
    x = _rgb(4, 8, 8)
    tiny_image_folder(tmp_path / "d", "train", x, np.array([0, 1, 0, 1]), ["a", "b"])
    tiny_image_folder(tmp_path / "d", "test", x, np.array([0, 1, 0, 1]), ["a", "b"])
    cache = tmp_path / "cache"
    first = S.load_imagefolder(str(tmp_path / "d"), cache_dir=str(cache))
    assert len(list(cache.glob("*.npz"))) == 2

    def no_decoding(*a, **k):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(S, "decode_images", no_decoding)
    second = S.load_imagefolder(str(tmp_path / "d"), cache_dir=str(cache))
    assert np.array_equal(first.train.images, second.train.images)


def test_imagefolder_lt_and_too_few_images(tmp_path, tiny_image_folder):
    y = np.repeat([0, 1, 2], [20, 12, 9])
    tiny_image_folder(tmp_path, "train", _rgb(len(y), 4, 4), y, ["c0", "c1", "c2"])
    tiny_image_folder(tmp_path, "test", _rgb(3, 4, 4), np.arange(3), ["c0", "c1", "c2"])
    b = build_data(_cfg(name="imagefolder", root=str(tmp_path), imbalance_factor=4))
    assert b.class_counts.tolist() == lt_counts(20, 3, 4) == [20, 10, 5]
    assert b.label.startswith(f"'{tmp_path.name}'-LT (IF 4, exp) from image folder")
    with pytest.raises(DataError, match=r"'c1' \(class 1\) has 12 training images .* asks for 14"):
        build_data(_cfg(name="imagefolder", root=str(tmp_path), imbalance_factor=2))
    keep = build_data(_cfg(name="imagefolder", root=str(tmp_path), imbalance_factor=1))
    assert keep.class_counts.tolist() == [20, 12, 9]


# ----------------------------------------------------------------------------- list files
def _list_dataset(tmp_path, size=8):
    x = _rgb(6, size, size)
    y = [0, 0, 0, 1, 1, 2]
    (tmp_path / "img" / "sub dir").mkdir(parents=True)
    lines = []
    for i, (im, t) in enumerate(zip(x, y)):
        rel = f"img/sub dir/{i}.png"
        Image.fromarray(im).save(tmp_path / rel)
        lines.append(f"{rel} {t}")
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n\n")
    (tmp_path / "test.txt").write_text("# comment\n" + "\n".join(lines[::2]) + "\n")
    return x, np.array(y)


def test_list_files(tmp_path):
    x, y = _list_dataset(tmp_path)
    src = S.load_listfile(str(tmp_path), "train.txt", "test.txt")
    assert src.long_tailed and src.train.classes == ["0", "1", "2"]
    assert np.array_equal(src.train.targets, y)
    assert np.array_equal(src.train.images, x)
    assert np.array_equal(src.test.targets, y[::2])
    b = build_data(_cfg(name="listfile", root=str(tmp_path), train_list="train.txt", test_list="test.txt",
                        imbalance_factor=100))
    assert b.class_counts.tolist() == [3, 2, 1]  # as given: the imbalance factor is ignored
    assert "imbalance_factor ignored" in b.label and b.imbalance_factor == 3


def test_list_files_large_images_lazy(tmp_path):
    _list_dataset(tmp_path, size=65)
    src = S.load_listfile(str(tmp_path), "train.txt", "test.txt")
    assert not src.train.in_memory and src.train.load(5).size == (65, 65)


@pytest.mark.parametrize(
    "line,msg",
    [("img/a.png", "expected 'relative/path label'"), ("img/a.png cat", "label 'cat' is not an integer"),
     ("img/a.png -1", "label -1 is negative")],
)
def test_bad_list_line_names_file_and_line(tmp_path, line, msg):
    _list_dataset(tmp_path)
    f = tmp_path / "train.txt"
    lines = f.read_text().splitlines()
    lines.insert(2, line)
    f.write_text("\n".join(lines))
    with pytest.raises(DataError, match=f"{f} line 3: {msg}"):
        S.load_listfile(str(tmp_path), "train.txt", "test.txt")


def test_list_file_other_errors(tmp_path):
    _list_dataset(tmp_path)
    with pytest.raises(DataError, match="needs data.train_list and data.test_list"):
        S.load_listfile(str(tmp_path), None, "test.txt")
    with pytest.raises(DataError, match="nope.txt does not exist"):
        S.load_listfile(str(tmp_path), "nope.txt", "test.txt")
    (tmp_path / "gap.txt").write_text("img/sub dir/0.png 0\nimg/sub dir/1.png 2\n")
    with pytest.raises(DataError, match="no image of class 1"):
        S.load_listfile(str(tmp_path), "gap.txt", "test.txt")
    (tmp_path / "missing.txt").write_text("img/none.png 0\n")
    with pytest.raises(DataError, match="none.png does not exist"):
        S.load_listfile(str(tmp_path), "missing.txt", "missing.txt")
    # a test label the train list lacks is the test list's fault, and says so
    (tmp_path / "test7.txt").write_text("img/sub dir/0.png 0\nimg/sub dir/5.png 7\n")
    with pytest.raises(DataError, match=r"test7.txt labels .*5.png with class 7, but .*train.txt has classes 0..2"):
        S.load_listfile(str(tmp_path), "train.txt", "test7.txt")


def test_list_files_saved_with_a_byte_order_mark(tmp_path):
    """Windows editors start UTF-8 files with a BOM; it is not part of the first path."""
    x, y = _list_dataset(tmp_path)
    for name in ("train.txt", "test.txt"):
        (tmp_path / name).write_bytes(b"\xef\xbb\xbf" + (tmp_path / name).read_bytes())
    src = S.load_listfile(str(tmp_path), "train.txt", "test.txt")
    assert np.array_equal(src.train.images, x) and np.array_equal(src.train.targets, y)


# ------------------------------------------------------------------------------ build_data
def test_build_data_cifar10_pickles_lt(tmp_path, tiny_cifar_pickles):
    w = tiny_cifar_pickles(tmp_path, 10, per_class=60, test_per_class=2)
    b = build_data(_cfg(name="cifar10", root=str(tmp_path), imbalance_factor=10))
    want = lt_counts(60, 10, 10)
    assert want == [60, 46, 35, 27, 21, 16, 12, 10, 7, 6]
    assert b.class_counts.tolist() == want and b.class_counts.dtype == np.int64
    assert len(b.train) == sum(want) and len(b.test) == 20
    idx = lt_indices(w["train_y"], want, 0)
    assert np.array_equal(b.train.origin, idx)
    assert np.array_equal(b.train.images, w["train_x"][idx])
    assert b.num_classes == 10 and b.in_channels == 3 and b.image_hw == (32, 32) and b.small
    assert b.mean == (0.4914, 0.4822, 0.4465) and b.label == "CIFAR-10-LT (IF 10, exp)"
    other_seed = build_data(_cfg(name="cifar10", root=str(tmp_path), imbalance_factor=10, lt_seed=1))
    assert not np.array_equal(other_seed.train.origin, b.train.origin)
    step = build_data(_cfg(name="cifar10", root=str(tmp_path), imbalance_factor=10, imbalance_type="step"))
    assert step.class_counts.tolist() == [60] * 5 + [6] * 5


def test_cifar10_folder_gives_same_subset_as_pickles(tmp_path, tiny_cifar_pickles, tiny_image_folder):
    w = tiny_cifar_pickles(tmp_path / "pk", 10, per_class=30, test_per_class=1)
    root = tmp_path / "folder"
    tiny_image_folder(root, "train", w["train_x"], w["train_y"], w["classes"])
    tiny_image_folder(root, "test", w["test_x"], w["test_y"], w["classes"])
    a = build_data(_cfg(name="cifar10", root=str(tmp_path / "pk"), imbalance_factor=10))
    b = build_data(_cfg(name="cifar10", root=str(root), imbalance_factor=10))
    assert a.class_counts.tolist() == b.class_counts.tolist() == lt_counts(30, 10, 10)
    # the very same images (PNG is lossless), in the same order
    assert np.array_equal(a.train.images, b.train.images)
    assert np.array_equal(a.train.targets, b.train.targets)
    assert b.label == f"CIFAR-10-LT (IF 10, exp) from image folder {root}"


def test_build_data_fmnist_and_make_dataset(tmp_path, tiny_fmnist):
    tiny_fmnist(tmp_path, n_train=200, n_test=10)
    cfg = _cfg(name="fmnist", root=str(tmp_path), imbalance_factor=5)
    b = build_data(cfg)
    assert b.class_counts.tolist() == lt_counts(20, 10, 5)
    assert b.label == "Fashion-MNIST-LT (IF 5, exp)" and b.in_channels == 1 and b.image_hw == (28, 28)
    assert b.mean == (0.2860,) and b.std == (0.3530,)
    ds = make_dataset(b.train, build_transform(cfg.data, b, train=False))
    x, y, i = ds[7]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    assert y == int(b.train.targets[7]) and i == 7
    expect = (torch.from_numpy(b.train.images[7, :, :, 0]).float() / 255 - 0.2860) / 0.3530
    assert torch.allclose(x[0], expect, atol=1e-6)
    views = make_dataset(b.train, build_transform(cfg.data, b, train=True), views=3)
    xs, _, _ = views[0]
    assert isinstance(xs, list) and len(xs) == 3 and all(v.shape == (1, 28, 28) for v in xs)
    loader = torch.utils.data.DataLoader(views, batch_size=4)
    xb, yb, ib = next(iter(loader))
    assert len(xb) == 3 and xb[0].shape == (4, 1, 28, 28) and ib.tolist() == [0, 1, 2, 3]


def test_build_data_mean_override_checked(tmp_path, tiny_fmnist):
    from allnc.errors import ConfigError

    tiny_fmnist(tmp_path, n_train=20, n_test=10)
    b = build_data(_cfg(name="fmnist", root=str(tmp_path), imbalance_factor=1, mean=[0.5], std=[0.25]))
    assert b.mean == (0.5,) and b.std == (0.25,) and b.label == "Fashion-MNIST (full training set, IF 1)"
    with pytest.raises(ConfigError, match="1 channel"):
        build_data(_cfg(name="fmnist", root=str(tmp_path), imbalance_factor=1, mean=[0.5, 0.5, 0.5], std=[1.0, 1.0, 1.0]))


def test_16_bit_grey_images_are_scaled_not_clipped(tmp_path):
    """Pillow's own conversion of a 16-bit grey image to 8 bits clips at 255, so a folder of
    16-bit PNGs would decode to flat white; decoding scales value / 257 instead, small images
    in memory and large ones read from disk alike."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls, (lo, hi) in (("dark", (1000, 8000)), ("bright", (40000, 60000))):
            d = tmp_path / "small" / split / cls
            d.mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(lo, hi, (8, 8)).astype(np.uint16)).save(d / f"{i}.png")
    first = tmp_path / "small" / "train" / "bright" / "0.png"
    raw = np.asarray(Image.open(first)).astype(np.int64)
    assert raw.max() > 255  # a real 16-bit file
    src = S.load_imagefolder(str(tmp_path / "small"))
    assert src.train.mode == "L"
    bright = src.train.images[src.train.targets == src.train.classes.index("bright")]
    dark = src.train.images[src.train.targets == src.train.classes.index("dark")]
    assert np.array_equal(bright[0, :, :, 0], np.rint(raw / 257).astype(np.uint8))
    assert bright.min() >= 40000 // 257 and dark.max() <= 8000 // 257 + 1
    big = tmp_path / "big.png"
    Image.fromarray((np.arange(80 * 80).reshape(80, 80) * 10).astype(np.uint16)).save(big)
    lazy = S.base.Split(targets=np.array([0]), classes=["a"], paths=[str(big)], mode="L")
    img = np.asarray(lazy.load(0)).astype(np.int64)
    assert np.array_equal(img, np.rint(np.arange(80 * 80).reshape(80, 80) * 10 / 257))
    assert np.array_equal(np.asarray(S.base.to_mode(Image.open(big), "RGB"))[..., 1], img)  # grey to colour


def test_one_colour_image_among_grey_ones_keeps_the_folder_in_colour(tmp_path, tiny_image_folder):
    x = _rgb(24, 8, 8)
    y = np.arange(24) % 2
    tiny_image_folder(tmp_path, "train", x[..., :1], y, ["a", "b"])  # grey files ...
    tiny_image_folder(tmp_path, "test", x[..., :1], y, ["a", "b"])
    Image.fromarray(x[5]).save(tmp_path / "train" / "b" / "0002.png")  # ... and one in colour, not in the sample
    src = S.load_imagefolder(str(tmp_path))
    assert src.train.mode == "RGB" and src.train.images.shape == (24, 8, 8, 3)
    i = [j for j, p in enumerate(sorted((tmp_path / "train").rglob("*.png"))) if p.name == "0002.png"
         and p.parent.name == "b"][0]
    assert np.array_equal(src.train.images[i], x[5])


def test_list_file_validation_list_is_the_runs_validation_split(tmp_path):
    from allnc.config import load_config, validate
    from allnc.data import has_validation
    from allnc.errors import ConfigError

    x, y = _list_dataset(tmp_path)
    (tmp_path / "val.txt").write_text("img/sub dir/5.png 2\nimg/sub dir/1.png 0\n")
    src = S.load_listfile(str(tmp_path), "train.txt", "test.txt", val_list="val.txt")
    assert src.val.targets.tolist() == [2, 0] and np.array_equal(src.val.images, x[[5, 1]])
    base = ["data.name=listfile", f"data.root={tmp_path}", "data.train_list=train.txt", "data.test_list=test.txt"]
    cfg = load_config("fmnist_lt_bbn", base + ["data.val_list=val.txt", "method.gbbn.inference_mix=val"])
    assert has_validation(cfg)
    b = build_data(cfg)
    assert b.val.targets.tolist() == [2, 0] and b.class_counts.tolist() == [3, 2, 1]  # training as given
    assert "validation list val.txt (2 images)" in b.label
    # without a validation list a list-file config has none, and what needs one names data.val_list
    assert not has_validation(load_config("fmnist_lt_ce", base))
    with pytest.raises(ConfigError, match="give data.val_list=FILE"):
        load_config("fmnist_lt_bbn", base + ["method.gbbn.inference_mix=val"])
    with pytest.raises(ConfigError, match="keep one of them"):
        load_config("fmnist_lt_ce", base + ["data.val_list=val.txt", "data.val_per_class=2"])
    with pytest.raises(ConfigError, match="not of data.name=fmnist"):
        load_config("fmnist_lt_ce", ["data.val_list=val.txt"])
    # a validation label the train list lacks is the validation list's fault
    (tmp_path / "val9.txt").write_text("img/sub dir/0.png 9\n")
    with pytest.raises(DataError, match=r"val9.txt labels .*0.png with class 9.*fix the validation list"):
        S.load_listfile(str(tmp_path), "train.txt", "test.txt", val_list="val9.txt")
    validate(cfg)


def test_a_validation_list_read_alone_equals_the_one_loaded_with_the_data(tmp_path):
    # what `allnc posthoc --val-list` reads: only the list, decoded as the run's training split
    x, y = _list_dataset(tmp_path)
    (tmp_path / "val.txt").write_text("img/sub dir/5.png 2\nimg/sub dir/1.png 0\nimg/sub dir/3.png 1\n")
    src = S.load_listfile(str(tmp_path), "train.txt", "test.txt", val_list="val.txt")
    (tmp_path / "train.txt").unlink()  # not read again
    alone = S.load_list_split(str(tmp_path), "val.txt", src.train.classes, src.train.mode, src.train.in_memory)
    assert alone.targets.tolist() == src.val.targets.tolist() == [2, 0, 1]
    assert alone.classes == src.train.classes and alone.mode == src.val.mode
    assert np.array_equal(alone.images, src.val.images)
    # kept as paths where the run kept its images as paths
    paths = S.load_list_split(str(tmp_path), "val.txt", src.train.classes, src.train.mode, in_memory=False)
    assert paths.images is None and [p.split("/")[-1] for p in paths.paths] == ["5.png", "1.png", "3.png"]
    (tmp_path / "val9.txt").write_text("img/sub dir/0.png 9\n")
    with pytest.raises(DataError, match=r"val9.txt labels .*with class 9, but the run's training list has classes 0..2"):
        S.load_list_split(str(tmp_path), "val9.txt", src.train.classes, src.train.mode, True,
                          trained_on="the run's training list")

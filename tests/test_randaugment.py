"""RandAugment in the form of BCL's and PaCo's released ImageNet-LT code: each operation on a
worked example, the level-to-argument table, the per-operation probability and magnitude noise,
seeding, the preset around it and the recipes that use it."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from allnc.config import DataConfig, load_config
from allnc.data import build_transform
from allnc.data.augment import IMAGENET_MEAN
from allnc.data.fast import fast_path_applicable
from allnc.data.randaugment import OPS, RandAugmentMstd, apply_op, mean_fill, op_argument


def grey(values):
    return Image.fromarray(np.asarray(values, dtype=np.uint8))


def arr(img):
    return np.asarray(img).astype(int)


def test_the_level_to_argument_table_at_levels_10_and_5():
    want10 = {"Rotate": 30.0, "Posterize": 4, "Solarize": 256, "SolarizeAdd": 110, "Color": 1.9, "Contrast": 1.9,
              "Brightness": 1.9, "Sharpness": 1.9, "ShearX": 0.3, "ShearY": 0.3, "TranslateXRel": 0.45,
              "TranslateYRel": 0.45, "AutoContrast": None, "Equalize": None, "Invert": None}
    want5 = {"Rotate": 15.0, "Posterize": 2, "Solarize": 128, "SolarizeAdd": 55, "Color": 1.0, "ShearX": 0.15,
             "TranslateYRel": 0.225}
    assert set(want10) == set(OPS)
    for name, v in want10.items():
        assert op_argument(name, 10.0) == pytest.approx(v) if v is not None else op_argument(name, 10.0) is None
    for name, v in want5.items():
        assert op_argument(name, 5.0) == pytest.approx(v)
    with pytest.raises(ValueError, match="unknown RandAugment operation"):
        op_argument("Cutout", 5.0)


def test_the_pixel_operations_on_a_worked_example():
    img = grey([[0, 10, 100], [127, 128, 250]])
    assert (arr(apply_op(img, "Invert", None)) == 255 - arr(img)).all()
    # Solarize: pixels at or above the threshold are inverted
    assert arr(apply_op(img, "Solarize", 100)).tolist() == [[0, 10, 155], [128, 127, 5]]
    # SolarizeAdd: pixels below 128 gain 110, capped at 255; the others stay
    assert arr(apply_op(img, "SolarizeAdd", 110)).tolist() == [[110, 120, 210], [237, 128, 250]]
    # Posterize keeps the top bits
    assert arr(apply_op(img, "Posterize", 4)).tolist() == [[0, 0, 96], [112, 128, 240]]
    assert arr(apply_op(img, "Posterize", 8)).tolist() == arr(img).tolist()
    # AutoContrast stretches the range to 0-255
    ac = arr(apply_op(img, "AutoContrast", None))
    assert ac.min() == 0 and ac.max() == 255
    # an enhancement factor of 1 changes nothing; brightness 0.5 halves every pixel
    for name in ("Contrast", "Brightness", "Sharpness"):
        assert (arr(apply_op(img, name, 1.0)) == arr(img)).all(), name
    assert np.abs(arr(apply_op(img, "Brightness", 0.5)) - arr(img) / 2).max() <= 1


def test_the_geometric_operations_move_content_and_fill_with_the_mean_colour():
    base = np.zeros((10, 20, 3), dtype=np.uint8)
    base[:, 5] = 200  # one bright column at x = 5
    img = Image.fromarray(base)
    fill = (1, 2, 3)
    # translate by -0.25 of the width: the output at x samples the input at x - 5, so the column
    # moves to x = 10 and the 5 uncovered columns on the left hold the fill colour
    out = np.asarray(apply_op(img, "TranslateXRel", -0.25, fill, Image.BILINEAR))
    assert (out[:, 10] == 200).all() and (out[:, :5] == fill).all()
    assert (np.asarray(apply_op(img, "TranslateXRel", 0.0, fill)) == base).all()
    # shear x by f: the output pixel (x, y) samples the input at (x + f y, y), centres at + 0.5
    # (nearest neighbour here: row 0 keeps the column at 5, row 8 has it at 5 + 4.25 -> 9)
    out = np.asarray(apply_op(img, "ShearX", -0.5, fill, Image.NEAREST))
    assert out[0, 5, 0] == 200 and out[8, 9, 0] == 200 and out[8, 5, 0] == 0
    # rotating by 180 degrees (nearest-free: exact for a symmetric size) mirrors both axes
    sq = np.arange(16, dtype=np.uint8).reshape(4, 4) * 10
    rot = np.asarray(apply_op(grey(sq), "Rotate", 180.0, (0,), Image.BILINEAR))
    assert (rot == sq[::-1, ::-1]).all()


def test_each_operation_applies_with_probability_p_and_the_level_is_noisy_and_clipped():
    torch.manual_seed(0)
    ra = RandAugmentMstd(n=1, m=10.0, mstd=0.5, ops=("Invert",))
    img = grey(np.full((2, 2), 7))
    inverted = np.mean([arr(ra(img))[0, 0] == 248 for _ in range(4000)])
    assert abs(inverted - 0.5) < 0.03  # p = 0.5 (4000 draws: standard error 0.008)
    # two operations: inverted an odd number of times with probability 2 p (1 - p) = 0.5, twice 0.25
    ra2 = RandAugmentMstd(n=2, m=10.0, mstd=0.5, ops=("Invert",), p=0.3)
    odd = np.mean([arr(ra2(img))[0, 0] == 248 for _ in range(4000)])
    assert abs(odd - 2 * 0.3 * 0.7) < 0.03
    levels = np.array([ra.draw_level() for _ in range(20000)])
    assert levels.max() == 10.0 and levels.min() > 7.5
    # N(10, 0.5) clipped at 10: half the draws are exactly 10, the mean is 10 - 0.5 sqrt(2 / pi) / 2
    assert abs((levels == 10.0).mean() - 0.5) < 0.02
    assert abs(levels.mean() - (10 - 0.5 * np.sqrt(2 / np.pi) / 2)) < 0.01
    assert RandAugmentMstd(m=7.0, mstd=0.0).draw_level() == 7.0


def test_signed_operations_take_either_sign_and_draws_follow_torch_seeding():
    base = np.zeros((8, 40), dtype=np.uint8)
    base[:, 20] = 255
    img = grey(base)
    ra = RandAugmentMstd(n=1, m=10.0, mstd=0.0, p=1.0, ops=("TranslateXRel",), fill=(0, 0, 0))
    torch.manual_seed(1)
    columns = {int(np.argmax(np.asarray(ra(img))[4])) for _ in range(50)}
    assert columns == {20 - 18, 20 + 18}  # 0.45 x 40 = 18 pixels, left or right
    full = RandAugmentMstd()
    rgb = Image.fromarray(np.random.RandomState(0).randint(0, 256, (16, 16, 3)).astype(np.uint8))
    torch.manual_seed(5)
    a = [arr(full(rgb)) for _ in range(5)]
    torch.manual_seed(5)
    b = [arr(full(rgb)) for _ in range(5)]
    assert all((x == y).all() for x, y in zip(a, b))
    assert any((x != arr(rgb)).any() for x in a)


def test_the_preset_is_the_released_classification_view_and_takes_the_data_keys():
    cfg = DataConfig(image_size=48, augment="randaug", randaug_n=3, randaug_m=9.0, randaug_mstd=0.0)
    b = SimpleNamespace(small=False, image_hw=(48, 48), in_channels=3, mean=IMAGENET_MEAN, std=(0.229, 0.224, 0.225))
    tr = build_transform(cfg, b, train=True)
    names = [type(op).__name__ for op in tr.transforms]
    assert names == ["RandomResizedCrop", "RandomHorizontalFlip", "ColorJitter", "RandAugmentMstd", "ToTensor", "Normalize"]
    crop, jitter, ra = tr.transforms[0], tr.transforms[2], tr.transforms[3]
    assert crop.scale == (0.08, 1.0) and jitter.hue is None and jitter.brightness == (0.6, 1.4)
    assert (ra.n, ra.m, ra.mstd, ra.p) == (3, 9.0, 0.0, 0.5)
    assert ra.fill == mean_fill(IMAGENET_MEAN) == (124, 116, 104)
    small = build_transform(DataConfig(augment="randaug"), SimpleNamespace(
        small=True, image_hw=(32, 32), in_channels=3, mean=IMAGENET_MEAN, std=(0.229, 0.224, 0.225)), train=True)
    assert [type(op).__name__ for op in small.transforms] == ["RandomCrop", "RandomHorizontalFlip", "RandAugmentMstd",
                                                              "ToTensor", "Normalize"]
    # the fast path has no batched RandAugment: such a run takes the conventional path
    imgs = np.zeros((4, 8, 8, 3), np.uint8)
    split = SimpleNamespace(images=imgs, targets=np.zeros(4, np.int64))
    ok, why = fast_path_applicable(SimpleNamespace(small=True, train=split, test=split),
                                   SimpleNamespace(augment="standard", pipeline="auto"), view_presets=("randaug",))
    assert not ok and "randaug" in why


@pytest.mark.parametrize("name,key", [("imagenet_lt_bcl", "bcl.ce_augment"), ("inat2018_bcl", "bcl.ce_augment"),
                                      ("imagenet_lt_paco", "paco.query_augment"), ("inat2018_paco", "paco.query_augment")])
def test_the_imagenet_lt_and_inaturalist_recipes_of_bcl_and_paco_use_it(name, key):
    cfg = load_config(name)
    section, field = key.split(".")
    assert cfg.method[section][field] == "randaug"
    assert (cfg.data.randaug_n, cfg.data.randaug_m, cfg.data.randaug_mstd) == (2, 10.0, 0.5)

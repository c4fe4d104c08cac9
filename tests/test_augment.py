"""Augmentation presets, Cutout and multi-view transforms."""
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from allnc.config import DataConfig
from allnc.data import Cutout, MultiView, build_transform
from allnc.data.augment import CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN
from allnc.errors import ConfigError


def _bundle(small=True, hw=(32, 32), channels=3):
    mean, std = (CIFAR_MEAN, CIFAR_STD) if channels == 3 else ((0.2860,), (0.3530,))
    return SimpleNamespace(small=small, image_hw=hw, in_channels=channels, mean=mean, std=std)


def _img(h=32, w=32, mode="RGB", seed=0):
    rs = np.random.RandomState(seed)
    shape = (h, w, 3) if mode == "RGB" else (h, w)
    return Image.fromarray(rs.randint(0, 256, size=shape).astype(np.uint8))


def _zero_box(mask):
    """(rows, cols) spans of the zeroed region, after checking it is one filled rectangle."""
    rows = np.flatnonzero(mask.any(1))
    cols = np.flatnonzero(mask.any(0))
    assert len(rows) and len(cols)
    assert rows[-1] - rows[0] + 1 == len(rows) and cols[-1] - cols[0] + 1 == len(cols)  # contiguous
    box = np.zeros_like(mask)
    box[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] = True
    assert np.array_equal(mask, box)  # exactly the rectangle, nothing else
    return (rows[0], rows[-1] + 1), (cols[0], cols[-1] + 1)


def test_cutout_zeros_one_square_clipped_at_borders():
    g = torch.Generator().manual_seed(0)
    cut = Cutout(8, generator=g)
    h, w = 20, 24
    boxes = set()
    full = 0
    for _ in range(200):
        out = cut(torch.ones(3, h, w))
        m = (out == 0).numpy()
        assert (m[0] == m[1]).all() and (m[0] == m[2]).all()  # same square in every channel
        (r0, r1), (c0, c1) = _zero_box(m[0])
        for a, b, size in ((r0, r1, h), (c0, c1, w)):
            assert b - a <= 8
            if b - a < 8:  # clipped: it must touch the border
                assert a == 0 or b == size
        full += (r1 - r0 == 8) and (c1 - c0 == 8)
        boxes.add((r0, r1, c0, c1))
    assert full > 50  # most squares lie inside
    assert len(boxes) > 50  # the position changes from call to call


def test_cutout_batch_and_identity():
    x = torch.ones(16, 1, 12, 12)
    out = Cutout(4)(x)
    assert out.shape == x.shape
    boxes = {_zero_box((o[0] == 0).numpy()) for o in out}
    assert len(boxes) > 1  # one square per sample, at different places
    assert torch.equal(Cutout(0)(x), x)
    assert torch.equal(x, torch.ones(16, 1, 12, 12))  # the input is not modified


def test_test_transform_is_deterministic_to_tensor_normalize():
    cfg = DataConfig()
    t = build_transform(cfg, _bundle(), train=False)
    img = _img()
    a, b = t(img), t(img)
    assert torch.equal(a, b)
    expect = (torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255
              - torch.tensor(CIFAR_MEAN)[:, None, None]) / torch.tensor(CIFAR_STD)[:, None, None]
    assert torch.allclose(a, expect, atol=1e-6)
    # "none" trains on the test transform
    n = build_transform(replace(cfg, augment="none"), _bundle(), train=True)
    assert torch.equal(n(img), a)


def test_standard_preset_random_crop_and_flip():
    t = build_transform(DataConfig(augment="standard"), _bundle(), train=True)
    kinds = [type(op) for op in t.transforms]
    assert kinds == [T.RandomCrop, T.RandomHorizontalFlip, T.ToTensor, T.Normalize]
    assert t.transforms[0].padding == 4
    torch.manual_seed(0)
    img = _img()
    outs = [t(img) for _ in range(8)]
    assert all(o.shape == (3, 32, 32) for o in outs)
    assert len({o.sum().item() for o in outs}) > 1


def test_strong_preset_finite_and_varied():
    cfg = DataConfig(augment="strong", cutout=16)
    t = build_transform(cfg, _bundle(), train=True)
    names = [type(op).__name__ for op in t.transforms]
    assert names == ["RandomCrop", "RandomHorizontalFlip", "AutoAugment", "ToTensor", "Normalize", "Cutout"]
    assert t.transforms[2].policy == T.AutoAugmentPolicy.CIFAR10 and t.transforms[-1].size == 16
    torch.manual_seed(0)
    outs = torch.stack([t(_img(seed=i)) for i in range(16)])
    assert torch.isfinite(outs).all() and outs.shape == (16, 3, 32, 32)
    # AutoAugment picks different sub-policies for different samples: on one fixed image,
    # the outputs of the AutoAugment step alone differ from draw to draw
    aa = t.transforms[2]
    img = _img(seed=99)
    results = {np.asarray(aa(img)).tobytes() for _ in range(30)}
    assert len(results) >= 5
    # grey 28x28 images (Fashion-MNIST) go through the same preset
    grey = build_transform(cfg, _bundle(hw=(28, 28), channels=1), train=True)
    y = grey(_img(28, 28, "L"))
    assert y.shape == (1, 28, 28) and torch.isfinite(y).all()


def test_large_image_presets():
    cfg = DataConfig(image_size=48, augment="strong")
    b = SimpleNamespace(small=False, image_hw=(48, 48), in_channels=3, mean=IMAGENET_MEAN, std=(0.229, 0.224, 0.225))
    tr = build_transform(cfg, b, train=True)
    names = [type(op).__name__ for op in tr.transforms]
    assert names == ["RandomResizedCrop", "RandomHorizontalFlip", "AutoAugment", "ToTensor", "Normalize"]
    assert tr.transforms[2].policy == T.AutoAugmentPolicy.IMAGENET
    img = _img(70, 90)
    assert tr(img).shape == (3, 48, 48)
    te = build_transform(cfg, b, train=False)
    assert te.transforms[0].size == int(48 * 256 / 224) and te.transforms[1].size == (48, 48)
    assert torch.equal(te(img), te(img)) and te(img).shape == (3, 48, 48)



def test_jitter_changes_a_grey_image_by_a_brightness_factor_in_range():
    # on a grey image of one colour, resized crops and flips change nothing and colour jitter's
    # contrast and saturation neither: what remains is brightness, a factor in [0.6, 1.4]
    grey = Image.new("RGB", (300, 300), (100, 100, 100))
    cfg = replace(DataConfig(), augment="jitter", image_size=224, mean=[0.0] * 3, std=[1.0] * 3)
    big = _bundle(small=False, hw=(300, 300))
    ratios = []
    torch.manual_seed(0)
    for _ in range(40):
        t = build_transform(cfg, big, train=True)(grey)
        v = float(t.max())
        assert torch.all(t == v)  # still one grey
        ratios.append(v * 255 / 100)
    assert 0.6 - 0.02 <= min(ratios) < 0.8 and 1.2 < max(ratios) <= 1.4 + 0.02
    plain = build_transform(replace(cfg, augment="standard"), big, train=True)(grey)
    assert torch.allclose(plain, torch.full_like(plain, 100 / 255))
    # small images: the standard crop and flip, then the same jitter
    ops = build_transform(cfg, _bundle(), train=True).transforms
    assert [type(op).__name__ for op in ops] == ["RandomCrop", "RandomHorizontalFlip", "ColorJitter", "ToTensor",
                                                 "Normalize"]
    assert (ops[2].brightness, ops[2].contrast, ops[2].saturation, ops[2].hue) == ((0.6, 1.4),) * 3 + (None,)

def test_mean_override_and_mismatch():
    t = build_transform(DataConfig(mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0]), _bundle(), train=False)
    img = _img()
    assert torch.allclose(t(img), T.ToTensor()(img))
    with pytest.raises(ConfigError, match="3 channel"):
        build_transform(DataConfig(mean=[0.5], std=[0.5]), _bundle(), train=False)
    with pytest.raises(ConfigError, match="data.augment"):
        build_transform(DataConfig(augment="heavy"), _bundle(), train=True)


def test_multiview_gives_k_independent_views():
    t = build_transform(DataConfig(augment="strong"), _bundle(), train=True)
    mv = MultiView(t, views=3)
    torch.manual_seed(1)
    views = mv(_img())
    assert len(views) == 3 and all(v.shape == (3, 32, 32) for v in views)
    assert not torch.equal(views[0], views[1])
    plain = build_transform(DataConfig(), _bundle(), train=False)
    a, b = MultiView([t, plain], views=2)(_img())
    assert torch.equal(b, plain(_img()))
    with pytest.raises(ValueError):
        MultiView([t, plain], views=3)

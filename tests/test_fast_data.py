"""The device-resident fast path (allnc.data.fast): batched augmentation against
torchvision per sample, its random distributions, and the loader's order and determinism.
Everything runs on CPU; the code takes the device as a parameter."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from torchvision.transforms import AutoAugment, AutoAugmentPolicy, InterpolationMode

from allnc.data import fast
from allnc.data.fast import (
    CIFAR10_POLICY,
    BatchAugment,
    DeviceImages,
    FastLoader,
    apply_op,
    autoaugment,
    crop_flip,
    cutout,
    cutout_mask,
    eval_batches,
    fast_path_applicable,
)

try:
    from allnc.data.samplers import ClassAwareSampler
except ImportError:  # pragma: no cover - the stand-in keeps these tests independent of it

    class ClassAwareSampler:  # type: ignore[no-redef]
        """Stand-in with the interface of allnc.data.samplers.ClassAwareSampler (global
        batch_size; rank r takes chunk r of each global batch)."""

        def __init__(self, targets, mode="instance", batch_size=128, seed=0, rank=0, world_size=1, drop_last=True):
            self.n, self.batch_size, self.seed = len(targets), batch_size, seed
            self.rank, self.world_size, self.epoch = rank, world_size, 0

        def global_indices(self, epoch=None):
            g = torch.Generator().manual_seed(self.seed * 1000 + (self.epoch if epoch is None else epoch))
            order = torch.randperm(self.n, generator=g)
            return order[: (self.n // self.batch_size) * self.batch_size]

        def set_epoch(self, epoch):
            self.epoch = epoch

        def __iter__(self):
            c = self.batch_size // self.world_size
            o = self.global_indices().view(-1, self.batch_size)[:, self.rank * c:(self.rank + 1) * c]
            return iter(o.reshape(-1).tolist())

        def __len__(self):
            return (self.n // self.batch_size) * (self.batch_size // self.world_size)


CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)


def _images(n, c=3, h=32, w=32, seed=0):
    """Random uint8 images with some structure: smooth gradients plus noise, a few of low
    contrast and one constant (the edge cases of AutoContrast and Equalize)."""
    g = torch.Generator().manual_seed(seed)
    yy = torch.linspace(0, 1, h).view(1, 1, h, 1)
    xx = torch.linspace(0, 1, w).view(1, 1, 1, w)
    a = torch.rand(n, c, 1, 1, generator=g) * 200
    b = torch.rand(n, c, 1, 1, generator=g) * 200
    noise = torch.randint(0, 60, (n, c, h, w), generator=g)
    x = (a * yy + b * xx + noise).clamp(0, 255).to(torch.uint8)
    if n >= 4:
        x[1] = x[1] // 8 + 100  # low contrast
        x[2] = 77  # constant
        x[3, :, : h // 2] = 255  # two-valued
    return x


# ------------------------------------------------------------------- policy and tables
def test_policy_and_magnitudes_match_torchvision():
    tv = AutoAugment(AutoAugmentPolicy.CIFAR10)
    assert [tuple(tuple(op) for op in sub) for sub in tv.policies] == [tuple(sub) for sub in CIFAR10_POLICY]
    space = tv._augmentation_space(10, (28, 36))
    for op in fast.OPS:
        mags, _ = space[op]
        if mags.dim() == 0:
            continue
        assert torch.allclose(fast.magnitude_bins(op, 28, 36), mags.float()), op


# ---------------------------------------------------------------------- crop and flip
@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 28, 20)])
def test_crop_flip_equals_torchvision_per_sample(shape):
    c, h, w = shape
    n = 24
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=g)
    offsets = torch.randint(0, 9, (n, 2), generator=g)
    offsets[0] = torch.tensor([0, 0])
    offsets[1] = torch.tensor([8, 8])
    offsets[2] = torch.tensor([0, 8])
    flips = torch.rand(n, generator=g) < 0.5
    out = crop_flip(x, offsets, flips, pad=4)
    for i in range(n):
        ref = TF.crop(TF.pad(x[i], [4]), int(offsets[i, 0]), int(offsets[i, 1]), h, w)
        if flips[i]:
            ref = TF.hflip(ref)
        assert torch.equal(out[i], ref), i


def test_standard_preset_crop_offsets_uniform_and_flips_half():
    """End to end through __call__: each image encodes its row in channel 0 and its column
    in channel 1, so the output's centre pixel reveals the crop offset and the flip."""
    h = w = 12
    n = 18000
    rows = torch.arange(h).view(h, 1).expand(h, w) + 10
    cols = torch.arange(w).view(1, w).expand(h, w) + 10
    img = torch.stack([rows, cols, torch.zeros(h, w, dtype=torch.long)]).to(torch.uint8)
    x = img.unsqueeze(0).expand(n, 3, h, w).contiguous()
    aug = BatchAugment("standard", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), pad=4)
    y = (aug(x, torch.Generator().manual_seed(123)) * 255).round().long()
    top = y[:, 0, 6, 6] - 12  # output row 6 reads padded row top + 6 = image row top + 2
    step = y[:, 1, 6, 7] - y[:, 1, 6, 6]
    assert set(step.unique().tolist()) <= {-1, 1}
    flipped = step == -1
    left = torch.where(flipped, y[:, 1, 6, 6] - 11, y[:, 1, 6, 6] - 12)
    # tolerance: every offset's frequency within 0.015 of 1/9 (its sd is 0.0023 at n=18000,
    # so > 6 sd) and a chi-square over the 9 values below 40 (8 dof: p < 3e-6)
    for off in (top, left):
        assert off.min() == 0 and off.max() == 8
        freq = torch.bincount(off, minlength=9).double() / n
        assert (freq - 1 / 9).abs().max() < 0.015, freq
        chi2 = (((freq * n) - n / 9) ** 2 / (n / 9)).sum()
        assert chi2 < 40, chi2
    # flips: 0.5 +- 0.015 (sd 0.0037)
    assert abs(flipped.double().mean().item() - 0.5) < 0.015
    # offsets of top and left independent-ish of the flip: both halves see all offsets
    assert torch.bincount(left[flipped], minlength=9).min() > 0


# ----------------------------------------------------------------------- colour ops
COLOUR_CASES = [
    ("Invert", 0.0, lambda im, m: TF.invert(im)),
    ("Solarize", 128.0, lambda im, m: TF.solarize(im, m)),
    ("Solarize", 28.33, lambda im, m: TF.solarize(im, m)),
    ("Posterize", 4, lambda im, m: TF.posterize(im, int(m))),
    ("Posterize", 7, lambda im, m: TF.posterize(im, int(m))),
    ("AutoContrast", 0.0, lambda im, m: TF.autocontrast(im)),
    ("Equalize", 0.0, lambda im, m: TF.equalize(im)),
    ("Brightness", 0.7, lambda im, m: TF.adjust_brightness(im, 1 + m)),
    ("Brightness", -0.6, lambda im, m: TF.adjust_brightness(im, 1 + m)),
    ("Color", 0.9, lambda im, m: TF.adjust_saturation(im, 1 + m)),
    ("Color", -0.5, lambda im, m: TF.adjust_saturation(im, 1 + m)),
    ("Contrast", 0.6, lambda im, m: TF.adjust_contrast(im, 1 + m)),
    ("Contrast", -0.8, lambda im, m: TF.adjust_contrast(im, 1 + m)),
    ("Sharpness", 0.9, lambda im, m: TF.adjust_sharpness(im, 1 + m)),
    ("Sharpness", -0.3, lambda im, m: TF.adjust_sharpness(im, 1 + m)),
]


@pytest.mark.parametrize("name,mag,ref", COLOUR_CASES, ids=[f"{c[0]}{c[1]}" for c in COLOUR_CASES])
@pytest.mark.parametrize("channels", [3, 1])
def test_colour_op_equals_torchvision_per_sample(name, mag, ref, channels):
    x = _images(12, c=channels, h=16, w=20, seed=3)
    out = apply_op(x, name, mag)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    for i in range(len(x)):
        r = ref(x[i], mag)
        diff = (out[i].int() - r.int()).abs().max().item()
        assert diff <= 1, (name, i, diff)


def test_colour_ops_with_per_sample_magnitudes():
    x = _images(10, seed=4)
    mags = torch.linspace(-0.9, 0.9, 10)
    for name, fn in (("Brightness", TF.adjust_brightness), ("Contrast", TF.adjust_contrast),
                     ("Color", TF.adjust_saturation), ("Sharpness", TF.adjust_sharpness)):
        out = apply_op(x, name, mags)
        for i in range(10):
            r = fn(x[i], 1 + float(mags[i]))
            assert (out[i].int() - r.int()).abs().max() <= 1, (name, i)
    thr = torch.tensor([0.0, 28.3, 56.7, 85.0, 113.3, 141.7, 170.0, 198.3, 226.7, 255.0])
    out = apply_op(x, "Solarize", thr)
    for i in range(10):
        assert torch.equal(out[i], TF.solarize(x[i], float(thr[i])))
    bits = torch.tensor([8, 7, 6, 5, 4, 4, 3, 2, 1, 0])
    out = apply_op(x, "Posterize", bits)
    for i in range(10):
        assert torch.equal(out[i], TF.posterize(x[i], int(bits[i])))


# --------------------------------------------------------------------- geometric ops
def _tv_geometric(img, name, m):
    h, w = img.shape[-2:]
    near = InterpolationMode.NEAREST
    if name == "ShearX":
        return TF.affine(img, 0.0, [0, 0], 1.0, [float(np.degrees(np.arctan(m))), 0.0], near, None, center=[0, 0])
    if name == "ShearY":
        return TF.affine(img, 0.0, [0, 0], 1.0, [0.0, float(np.degrees(np.arctan(m)))], near, None, center=[0, 0])
    if name == "TranslateX":
        return TF.affine(img, 0.0, [int(m), 0], 1.0, [0.0, 0.0], near, None)
    if name == "TranslateY":
        return TF.affine(img, 0.0, [0, int(m)], 1.0, [0.0, 0.0], near, None)
    if name == "Rotate":
        return TF.rotate(img, m, near, fill=None)
    raise AssertionError(name)


GEOM_CASES = [("ShearX", 0.3), ("ShearX", -0.1667), ("ShearY", 0.2667), ("ShearY", -0.3),
              ("TranslateX", 14.5), ("TranslateX", -7.25), ("TranslateY", 4.83), ("TranslateY", -14.5),
              ("Rotate", 30.0), ("Rotate", -6.67)]


@pytest.mark.parametrize("name,mag", GEOM_CASES, ids=[f"{c[0]}{c[1]}" for c in GEOM_CASES])
def test_geometric_op_equals_torchvision_affine(name, mag):
    x = _images(8, h=32, w=28, seed=5)
    out = apply_op(x, name, mag)
    ref = torch.stack([_tv_geometric(x[i], name, mag) for i in range(len(x))])
    # nearest neighbour: at most 0.5% of the pixels may land on the other side of a
    # rounding tie; the rest must be equal
    mismatch = (out != ref).any(dim=1).float().mean().item()
    assert mismatch <= 0.005, mismatch
    assert (out != ref).any(dim=1).sum() <= 0.005 * out[:, 0].numel()
    assert not torch.equal(out, x)


def test_geometric_ops_mixed_in_one_batch():
    """Five different geometric ops with per-sample magnitudes share one grid_sample."""
    x = _images(10, seed=6)
    ops = ["ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"] * 2
    mags = torch.tensor([0.2, -0.1, 9.0, -12.0, 17.0, -0.3, 0.25, -3.0, 5.0, -29.0], dtype=torch.float64)
    op_ids = torch.tensor([fast.OPS.index(o) for o in ops])
    out = fast.affine_batch(x, fast.geometric_matrices(op_ids, mags, 32, 32))
    for i in range(10):
        ref = _tv_geometric(x[i], ops[i], float(mags[i]))
        assert (out[i] != ref).any(dim=0).float().mean() <= 0.005, ops[i]


# -------------------------------------------------------------------- AutoAugment
def test_autoaugment_per_sample_equals_torchvision_ops():
    """The grouped batch implementation against applying, sample by sample, torchvision's
    own AutoAugment op function with the same sub-policy, firing and signs."""
    from torchvision.transforms.autoaugment import _apply_op

    n = 75
    x = _images(n, seed=7)
    g = torch.Generator().manual_seed(8)
    policy = torch.arange(n) % 25  # every sub-policy three times
    u = torch.rand(n, 2, generator=g) * 0.6  # most ops fire
    sign = torch.randint(2, (n, 2), generator=g)
    out = autoaugment(x, policy, u, sign)
    space = AutoAugment(AutoAugmentPolicy.CIFAR10)._augmentation_space(10, (32, 32))
    bad = []
    for i in range(n):
        img = x[i]
        for k, (op, p, b) in enumerate(CIFAR10_POLICY[int(policy[i])]):
            if u[i, k] <= p:
                mags, signed = space[op]
                m = float(mags[b].item()) if b is not None else 0.0
                if signed and sign[i, k] == 0:
                    m = -m
                img = _apply_op(img, op, m, interpolation=InterpolationMode.NEAREST, fill=None)
        d = (out[i].int() - img.int()).abs()
        # colour ops within 1 grey level; a geometric op may move a pixel across a rounding tie
        if (d > 1).any(dim=0).float().mean() > 0.005:
            bad.append((i, CIFAR10_POLICY[int(policy[i])]))
    assert not bad, bad


def test_strong_gives_different_ops_to_samples_and_stays_in_range():
    n = 64
    one = _images(1, seed=9)
    x = one.expand(n, -1, -1, -1).contiguous()
    g = torch.Generator().manual_seed(10)
    # AutoAugment alone: the identical inputs come out as many different images
    policy = torch.randint(25, (n,), generator=g)
    u, sign = torch.rand(n, 2, generator=g), torch.randint(2, (n, 2), generator=g)
    aa = autoaugment(x, policy, u, sign)
    distinct = len({tuple(t.flatten().tolist()) for t in aa})
    assert distinct >= 20, distinct
    # the full strong preset
    aug = BatchAugment("strong", CIFAR_MEAN, CIFAR_STD, cutout=16)
    y = aug(x, g)
    assert y.dtype == torch.float32 and y.shape == (n, 3, 32, 32)
    assert torch.isfinite(y).all()
    flat = y.flatten(1)
    assert len({tuple(t.tolist()) for t in flat}) == n
    lo = ((0.0 - torch.tensor(CIFAR_MEAN)) / torch.tensor(CIFAR_STD)).view(1, 3, 1, 1)
    hi = ((1.0 - torch.tensor(CIFAR_MEAN)) / torch.tensor(CIFAR_STD)).view(1, 3, 1, 1)
    assert (y >= lo - 1e-5).all() and (y <= hi + 1e-5).all()


def test_strong_is_reproducible_from_the_generator():
    x = _images(16, seed=11)
    aug = BatchAugment("strong", CIFAR_MEAN, CIFAR_STD)
    a = aug(x, torch.Generator().manual_seed(5))
    b = aug(x, torch.Generator().manual_seed(5))
    c = aug(x, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


# ------------------------------------------------------------------------- cutout
def test_cutout_zeroes_exactly_one_clipped_square():
    n, h, w, size = 6, 32, 32, 16
    x = torch.rand(n, 3, h, w) + 0.5  # no zeros
    centers = torch.tensor([[16, 16], [0, 0], [31, 31], [5, 28], [31, 0], [8, 8]])
    out = cutout(x, centers, size)
    for i in range(n):
        cy, cx = centers[i].tolist()
        y1, y2 = max(cy - 8, 0), min(cy + 8, h)
        x1, x2 = max(cx - 8, 0), min(cx + 8, w)
        expect = torch.zeros(h, w, dtype=torch.bool)
        expect[y1:y2, x1:x2] = True
        zero = out[i] == 0
        assert torch.equal(zero, expect.expand(3, h, w)), i
        assert torch.equal(out[i][~zero], x[i][~zero])
    assert (out[0] == 0).all(dim=0).sum() == 256 and (out[1] == 0).all(dim=0).sum() == 64


def test_strong_preset_cuts_one_square_per_sample():
    n = 32
    x = _images(n, seed=12)
    # a mean no uint8 pixel hits exactly, so only Cutout produces exact zeros
    mean, std = (0.50013, 0.50013, 0.50013), (0.25, 0.25, 0.25)
    aug = BatchAugment("strong", mean, std, cutout=12)
    params = aug.sample_params(n, 32, 32, torch.Generator().manual_seed(13))
    y = aug.apply(x, params)
    expect = cutout_mask(params["cutout"], 12, 32, 32)
    zero = y == 0
    assert torch.equal(zero, expect[:, None].expand_as(zero))
    assert ((zero[:, 0].sum(dim=(1, 2)) > 0) & (zero[:, 0].sum(dim=(1, 2)) <= 144)).all()


# ------------------------------------------------------------------- device images
def test_device_images_layout():
    arr = np.random.RandomState(0).randint(0, 256, (10, 8, 6, 3)).astype(np.uint8)
    d = DeviceImages(arr, np.arange(10), "cpu")
    assert d.x.shape == (10, 3, 8, 6) and d.x.dtype == torch.uint8 and d.y.dtype == torch.int64
    assert d.x.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(d.x[4].permute(1, 2, 0), torch.from_numpy(arr[4]))
    d2 = DeviceImages(arr[..., 0], np.arange(10), "cpu", channels_last=False)
    assert d2.x.shape == (10, 1, 8, 6) and d2.x.is_contiguous()
    xb, yb = d.gather(torch.tensor([3, 1]))
    assert torch.equal(yb, torch.tensor([3, 1])) and torch.equal(xb[1], d.x[1])


def test_eval_batches_normalize_only():
    arr = np.random.RandomState(1).randint(0, 256, (10, 4, 4, 3)).astype(np.uint8)
    d = DeviceImages(arr, np.arange(10), "cpu")
    batches = list(eval_batches(d, 4, CIFAR_MEAN, CIFAR_STD))
    assert [len(y) for _, y in batches] == [4, 4, 2]
    x = torch.cat([b[0] for b in batches])
    ref = TF.normalize(torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255, CIFAR_MEAN, CIFAR_STD)
    assert torch.allclose(x, ref, atol=1e-5)
    assert torch.equal(torch.cat([y for _, y in batches]), torch.arange(10))


# -------------------------------------------------------------------------- loader
def _data(n=100, h=8, w=8, seed=0):
    rs = np.random.RandomState(seed)
    return DeviceImages(rs.randint(0, 256, (n, h, w, 3)).astype(np.uint8), rs.randint(0, 5, n), "cpu")


def _loader(images, world=1, rank=0, gbs=16, preset="strong", views=1, seed=3, mode="instance"):
    s = ClassAwareSampler(images.y.numpy(), mode=mode, batch_size=gbs, seed=7, rank=rank, world_size=world,
                          drop_last=True)
    return FastLoader(images, s, gbs // world, BatchAugment(preset, CIFAR_MEAN, CIFAR_STD, cutout=4),
                      views=views, seed=seed), s


def test_loader_follows_the_sampler_order():
    images = _data()
    loader, sampler = _loader(images, mode="balanced")
    loader.set_epoch(2)
    batches = list(loader)
    assert len(batches) == len(loader) == 100 // 16
    idx = torch.cat([b["index"] for b in batches])
    assert torch.equal(idx, sampler.global_indices(2)[: len(batches) * 16])
    for b in batches:
        assert b["x"].shape == (16, 3, 8, 8) and b["x"].dtype == torch.float32
        assert b["y"].dtype == torch.int64 and b["index"].dtype == torch.int64
        assert torch.equal(b["y"], images.y[b["index"]])


def test_loader_same_batches_for_same_seed_and_epoch():
    images = _data()
    a, _ = _loader(images)
    b, _ = _loader(images)
    a.set_epoch(5)
    b.set_epoch(5)
    for ba, bb in zip(a, b):
        assert torch.equal(ba["index"], bb["index"]) and torch.equal(ba["x"], bb["x"])
    b.set_epoch(6)
    first_a = next(iter(a))
    first_b = next(iter(b))
    assert not torch.equal(first_a["index"], first_b["index"])
    # the same indices under another epoch's generator get other augmentations
    c, _ = _loader(images, seed=4)
    c.set_epoch(5)
    assert not torch.equal(next(iter(c))["x"], first_a["x"])


def test_two_ranks_together_equal_one_rank():
    images = _data()
    one, _ = _loader(images, world=1, rank=0, gbs=16)
    r0, _ = _loader(images, world=2, rank=0, gbs=16)
    r1, _ = _loader(images, world=2, rank=1, gbs=16)
    for ld in (one, r0, r1):
        ld.set_epoch(1)
    b1, b0, bb1 = list(one), list(r0), list(r1)
    assert len(b1) == len(b0) == len(bb1) == 6
    for full, a, b in zip(b1, b0, bb1):
        assert a["x"].shape[0] == b["x"].shape[0] == 8
        assert torch.equal(torch.cat([a["index"], b["index"]]), full["index"])
        assert torch.equal(torch.cat([a["y"], b["y"]]), full["y"])
        # augmentation is drawn for the global batch: the very same augmented samples
        assert torch.equal(torch.cat([a["x"], b["x"]]), full["x"])


def test_loader_views_are_independent():
    images = _data()
    loader, _ = _loader(images, views=2, preset="standard")
    loader.set_epoch(0)
    b = next(iter(loader))
    assert isinstance(b["x"], list) and len(b["x"]) == 2
    assert b["x"][0].shape == b["x"][1].shape == (16, 3, 8, 8)
    assert not torch.equal(b["x"][0], b["x"][1])


def test_loader_rejects_mismatched_batch():
    images = _data()
    s = ClassAwareSampler(images.y.numpy(), batch_size=16, world_size=2, rank=0)
    with pytest.raises(ValueError):
        FastLoader(images, s, 16, None)


# ------------------------------------------------------------------- applicability
def test_fast_path_applicable():
    imgs = np.zeros((4, 8, 8, 3), np.uint8)
    split = SimpleNamespace(images=imgs, targets=np.zeros(4, np.int64))
    bundle = SimpleNamespace(small=True, train=split, test=split)
    ok, why = fast_path_applicable(bundle, SimpleNamespace(augment="strong", pipeline="auto"))
    assert ok, why
    assert not fast_path_applicable(bundle, SimpleNamespace(augment="strong", pipeline="conventional"))[0]
    ok, why = fast_path_applicable(bundle, SimpleNamespace(augment="randaug", pipeline="auto"))
    assert not ok and "randaug" in why
    ok, why = fast_path_applicable(bundle, SimpleNamespace(augment="jitter", pipeline="auto"))
    assert not ok and "jitter" in why
    # every preset of allnc.data.augment.PRESETS but RandAugment and colour jitter has a batched
    # implementation
    assert fast.FAST_PRESETS == ("standard", "strong", "none", "sim")
    ok, why = fast_path_applicable(bundle, SimpleNamespace(augment="standard", pipeline="auto"), view_presets=("sim",))
    assert ok, why
    ok, why = fast_path_applicable(bundle, SimpleNamespace(augment="sim", pipeline="auto"))
    assert ok, why
    big = SimpleNamespace(small=False, train=SimpleNamespace(images=None), test=SimpleNamespace(images=None))
    ok, why = fast_path_applicable(big, SimpleNamespace(augment="standard", pipeline="fast"))
    assert not ok and "memory" in why
    four = SimpleNamespace(images=np.zeros((4, 8, 8, 4), np.uint8))
    assert not fast_path_applicable(SimpleNamespace(small=True, train=four, test=four),
                                    SimpleNamespace(augment="strong", pipeline="auto"))[0]
    ok, why = fast_path_applicable(SimpleNamespace(small=True, train=four, test=four),
                                   SimpleNamespace(augment="standard", pipeline="auto"), view_presets=("sim",))
    assert not ok and "sim" in why


def test_strong_order_is_autoaugment_then_crop_flip():
    x = _images(16, seed=14)
    g = torch.Generator().manual_seed(15)
    aug = BatchAugment("strong", CIFAR_MEAN, CIFAR_STD, cutout=8)
    p = aug.sample_params(16, 32, 32, g)
    y = aug.apply(x, p)
    z = crop_flip(autoaugment(x, p["policy"], p["u"], p["sign"]), p["offset"], p["flip"], 4)
    ref = cutout(fast.normalize(z, CIFAR_MEAN, CIFAR_STD), p["cutout"], 8)
    assert torch.allclose(y, ref, atol=1e-5)
    conventional = autoaugment(crop_flip(x, p["offset"], p["flip"], 4), p["policy"], p["u"], p["sign"])
    assert not torch.allclose(cutout(fast.normalize(conventional, CIFAR_MEAN, CIFAR_STD), p["cutout"], 8), y)


def test_loader_with_a_plain_iterable_sampler():
    """A sampler without rank_indices: the loader follows its __iter__ after set_epoch."""

    class Plain:
        def __init__(self):
            self.epoch = 0

        def set_epoch(self, e):
            self.epoch = e

        def __iter__(self):
            return iter(torch.randperm(50, generator=torch.Generator().manual_seed(self.epoch)).tolist())

        def __len__(self):
            return 50

    images = _data(n=50)
    loader = FastLoader(images, Plain(), 8, None)
    loader.set_epoch(4)
    batches = list(loader)
    assert len(batches) == len(loader) == 6
    assert torch.equal(torch.cat([b["index"] for b in batches]),
                       torch.randperm(50, generator=torch.Generator().manual_seed(4))[:48])
    assert batches[0]["x"].dtype == torch.uint8  # augment=None: the raw gathered batch


# ------------------------------------------------------------ sim (SimAugment) preset
from allnc.data.fast import sim as fsim  # noqa: E402


def _tv_boxes(u_area, u_ratio, u_offset, h, w, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision's RandomResizedCrop.get_params, line by line, with its random draws
    replaced by the given uniforms (one row per sample)."""
    import math

    out = []
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for ua, ur, uo in zip(u_area.tolist(), u_ratio.tolist(), u_offset.tolist()):
        for a, r in zip(ua, ur):
            target_area = h * w * (scale[0] + (scale[1] - scale[0]) * a)
            aspect_ratio = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * r)
            cw = int(round(math.sqrt(target_area * aspect_ratio)))
            ch = int(round(math.sqrt(target_area / aspect_ratio)))
            if 0 < cw <= w and 0 < ch <= h:
                out.append([int(uo[0] * (h - ch + 1)), int(uo[1] * (w - cw + 1)), ch, cw])
                break
        else:
            in_ratio = float(w) / float(h)
            if in_ratio < min(ratio):
                cw, ch = w, int(round(w / min(ratio)))
            elif in_ratio > max(ratio):
                ch, cw = h, int(round(h * max(ratio)))
            else:
                cw, ch = w, h
            out.append([(h - ch) // 2, (w - cw) // 2, ch, cw])
    return torch.tensor(out, dtype=torch.int64)


@pytest.mark.parametrize("h,w", [(32, 32), (8, 20), (20, 8)])
def test_sim_crop_boxes_follow_the_get_params_rule(h, w):
    g = torch.Generator().manual_seed(h * 100 + w)
    n = 300
    u_area = torch.rand(n, 10, generator=g, dtype=torch.float64)
    u_ratio = torch.rand(n, 10, generator=g, dtype=torch.float64)
    u_offset = torch.rand(n, 2, generator=g, dtype=torch.float64)
    # rows whose first tries all fail (the whole area at the extreme ratios), and rows that
    # fail every try (the central-crop fallback)
    u_area[:100, :5], u_ratio[:50, :5], u_ratio[50:100, :5] = 1.0 - 1e-12, 1.0 - 1e-12, 0.0
    u_area[100:120], u_ratio[100:110], u_ratio[110:120] = 1.0 - 1e-12, 1.0 - 1e-12, 0.0
    boxes = fsim.resized_crop_boxes(u_area, u_ratio, u_offset, h, w)
    assert torch.equal(boxes, _tv_boxes(u_area, u_ratio, u_offset, h, w))
    top, left, bh, bw = boxes.unbind(1)
    assert bool(((top >= 0) & (left >= 0) & (bh >= 1) & (bw >= 1) & (top + bh <= h) & (left + bw <= w)).all())


def test_sim_crop_boxes_distribution_matches_torchvision():
    from torchvision.transforms import RandomResizedCrop

    n, h, w = 2000, 32, 32
    torch.manual_seed(0)
    img = torch.zeros(1, h, w)
    ref = torch.tensor([RandomResizedCrop.get_params(img, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(n)]).double()
    ours = fsim.sample_sim(n, h, w, torch.Generator().manual_seed(1))["crop"].double()
    for t in (ref, ours):
        t[:, 0] = (t[:, 0] + t[:, 2] / 2) / h  # box centres and area fraction
        t[:, 1] = (t[:, 1] + t[:, 3] / 2) / w
        t[:, 2] = t[:, 2] * t[:, 3] / (h * w)
        t[:, 3] = torch.log(t[:, 3] / (t[:, 2] * h * w / t[:, 3]))  # log(width / height)
    assert torch.allclose(ours.mean(0), ref.mean(0), atol=0.03), (ours.mean(0), ref.mean(0))
    assert torch.allclose(ours.std(0), ref.std(0), atol=0.03), (ours.std(0), ref.std(0))


def test_sim_resized_crop_flip_equals_torchvision_per_sample():
    import torchvision.transforms.v2.functional as F2

    x = _images(8, h=13, w=17, seed=20).float() / 255
    boxes = torch.tensor([[0, 0, 13, 17], [2, 3, 5, 7], [1, 0, 12, 4], [0, 5, 9, 12],
                          [7, 9, 6, 8], [3, 3, 1, 1], [0, 0, 13, 1], [12, 0, 1, 17]])
    flips = torch.tensor([0, 1, 0, 1, 1, 0, 1, 0], dtype=torch.bool)
    y = fsim.resized_crop_flip(x, boxes, flips)
    for i in range(8):
        t, l, bh, bw = boxes[i].tolist()
        r1 = TF.resized_crop(x[i], t, l, bh, bw, [13, 17], antialias=False)
        r2 = F2.resized_crop(x[i], t, l, bh, bw, [13, 17], antialias=False)
        if flips[i]:
            r1, r2 = TF.hflip(r1), F2.horizontal_flip(r2)
        assert torch.allclose(y[i], r1, atol=1e-5, rtol=0), (i, (y[i] - r1).abs().max())
        assert torch.allclose(y[i], r2, atol=1e-5, rtol=0), (i, (y[i] - r2).abs().max())


def test_sim_crop_matches_pil_resize_within_a_grey_level():
    """The crop never exceeds the image, so resizing it back only upsamples: PIL's
    (antialiased) bilinear resize of the conventional pipeline gives the same values up to
    its uint8 rounding."""
    from PIL import Image

    x = _images(24, seed=21)
    p = fsim.sample_sim(24, 32, 32, torch.Generator().manual_seed(22))
    y = fsim.resized_crop_flip(x.float() / 255, p["crop"], p["flip"]) * 255
    for i in range(24):
        t, l, bh, bw = p["crop"][i].tolist()
        im = TF.resized_crop(Image.fromarray(x[i].permute(1, 2, 0).numpy()), t, l, bh, bw, [32, 32])
        ref = torch.from_numpy(np.array(TF.hflip(im) if p["flip"][i] else im)).permute(2, 0, 1).float()
        assert (y[i] - ref).abs().max() <= 1.0 + 1e-3


_TV_JITTER = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
_SIM_JITTER = (fsim.adjust_brightness, fsim.adjust_contrast, fsim.adjust_saturation, fsim.adjust_hue)


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("op", range(4))
def test_sim_colour_op_equals_torchvision_per_sample(op, channels):
    x = _images(12, c=channels, h=9, w=11, seed=23).float() / 255
    g = torch.Generator().manual_seed(24 + op)
    f = torch.rand(12, generator=g) * 0.8 + 0.6 if op < 3 else torch.rand(12, generator=g) * 0.4 - 0.2
    if op == 3:
        f[:4] = torch.tensor([0.0, 0.5, -0.5, 0.1])
    y = _SIM_JITTER[op](x, f)
    tol = 1e-6 if op < 3 else 1e-5  # hue: the closed form of torchvision's _hsv2rgb
    for i in range(12):
        ref = _TV_JITTER[op](x[i], float(f[i]))
        assert torch.allclose(y[i], ref, atol=tol, rtol=0), (i, (y[i] - ref).abs().max())


def test_sim_grayscale_equals_torchvision():
    x = _images(6, seed=25).float() / 255
    gray = torch.tensor([1, 0, 1, 0, 0, 1], dtype=torch.bool)
    y = fsim.random_grayscale(x, gray)
    for i in range(6):
        ref = TF.rgb_to_grayscale(x[i], num_output_channels=3) if gray[i] else x[i]
        assert torch.equal(y[i], ref)


def _tv_sim(img, p, i):
    """SimAugment of sample i with its drawn parameters, torchvision's functional ops one
    sample at a time: resized crop (bilinear, no antialias) + flip, the jitter ops in the
    drawn order, greyscale, on a float image in [0, 1]."""
    c, h, w = img.shape
    t, l, bh, bw = p["crop"][i].tolist()
    r = TF.resized_crop(img, t, l, bh, bw, [h, w], antialias=False)
    r = (TF.hflip(r) if p["flip"][i] else r).clamp(0, 1)
    return _tv_jitter_gray(r, p, i)


def _tv_jitter_gray(r, p, i):
    c = r.shape[0]
    if p["jitter"][i]:
        for op in p["order"][i].tolist():
            if op < 2 or c == 3:
                r = _TV_JITTER[op](r, float(p["factors"][i, op]))
    if c == 3 and p["gray"][i]:
        r = TF.rgb_to_grayscale(r, num_output_channels=3)
    return r


@pytest.mark.parametrize("channels", [3, 1])
def test_sim_color_jitter_in_random_order_equals_torchvision_chain(channels):
    n = 32
    x = _images(n, c=channels, h=8, w=8, seed=26).float() / 255
    p = fsim.sample_sim(n, 8, 8, torch.Generator().manual_seed(27))
    p["gray"][:] = False
    assert len({tuple(o) for o in p["order"].tolist()}) > 8  # many different orders
    y = fsim.color_jitter(x, p["jitter"], p["factors"], p["order"])
    for i in range(n):
        ref = _tv_jitter_gray(x[i], p, i)
        assert torch.allclose(y[i], ref, atol=1e-5, rtol=0), (i, (y[i] - ref).abs().max())


@pytest.mark.parametrize("channels", [3, 1])
def test_sim_preset_equals_torchvision_per_sample(channels):
    n = 32
    mean, std = (CIFAR_MEAN, CIFAR_STD) if channels == 3 else ((0.286,), (0.353,))
    x = _images(n, c=channels, h=12, w=10, seed=28)
    aug = BatchAugment("sim", mean, std)
    assert aug.pad == 0 and aug.cutout == 0
    p = aug.sample_params(n, 12, 10, torch.Generator().manual_seed(29))
    y = aug.apply(x, p)
    assert y.shape == (n, channels, 12, 10) and y.dtype == torch.float32
    for i in range(n):
        ref = TF.normalize(_tv_sim(x[i].float() / 255, p, i), list(mean), list(std))
        assert torch.allclose(y[i], ref, atol=1e-4, rtol=0), (i, (y[i] - ref).abs().max())


def test_sim_params_fractions_and_ranges():
    n = 4000
    p = fsim.sample_sim(n, 32, 32, torch.Generator().manual_seed(30))
    assert abs(p["jitter"].float().mean().item() - 0.8) < 0.03
    assert abs(p["gray"].float().mean().item() - 0.2) < 0.03
    assert abs(p["flip"].float().mean().item() - 0.5) < 0.03
    f = p["factors"]
    assert bool((f[:, :3] >= 0.6).all() and (f[:, :3] <= 1.4).all() and (f[:, 3].abs() <= 0.1).all())
    assert torch.allclose(f.mean(0), torch.tensor([1.0, 1.0, 1.0, 0.0]), atol=0.02)
    assert torch.equal(p["order"].sort(1).values, torch.arange(4).expand(n, 4))
    first = torch.bincount(p["order"][:, 0], minlength=4).float() / n  # each op first 1/4 of the time
    assert torch.allclose(first, torch.full((4,), 0.25), atol=0.03)


def test_sim_jitters_about_80_percent_greys_about_20_and_leaves_the_rest():
    n = 1000
    x = _images(n, h=8, w=8, seed=31)
    x[1:4] = _images(3, h=8, w=8, seed=32)  # no constant or low-contrast samples here
    aug = BatchAugment("sim", CIFAR_MEAN, CIFAR_STD)
    p = aug.sample_params(n, 8, 8, torch.Generator().manual_seed(33))
    y = aug.apply(x, p)
    z = fsim.apply_sim(x.float() / 255, p)  # before normalization
    m, s = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    assert torch.allclose(y, (z - m) / s, atol=1e-5, rtol=0)
    crop = fsim.resized_crop_flip(x.float() / 255, p["crop"], p["flip"]).clamp(0, 1)
    grey = (z.amax(1) - z.amin(1)).amax(dim=(1, 2)) == 0
    changed = ~(z == crop).flatten(1).all(1)
    assert torch.equal(grey, p["gray"])
    assert abs(grey.float().mean().item() - 0.2) < 0.04
    colour = ~grey
    assert torch.equal(changed[colour], p["jitter"][colour])
    assert abs(changed[colour].float().mean().item() - 0.8) < 0.04
    # a sample without jitter or greyscale is its crop + flip alone, exactly
    plain = ~p["jitter"] & ~p["gray"]
    assert plain.sum() > 100
    assert torch.equal(z[plain], crop[plain])


def test_sim_rejects_other_channel_counts():
    aug = BatchAugment("sim")
    x = torch.zeros(2, 4, 8, 8, dtype=torch.uint8)
    with pytest.raises(ValueError):
        aug(x, torch.Generator().manual_seed(0))


def test_sim_loader_reproducible_and_two_ranks_equal_one_rank():
    images = _data(n=64)
    one, _ = _loader(images, world=1, rank=0, gbs=16, preset="sim", views=2)
    again, _ = _loader(images, world=1, rank=0, gbs=16, preset="sim", views=2)
    r0, _ = _loader(images, world=2, rank=0, gbs=16, preset="sim", views=2)
    r1, _ = _loader(images, world=2, rank=1, gbs=16, preset="sim", views=2)
    for ld in (one, again, r0, r1):
        ld.set_epoch(3)
    for full, same, a, b in zip(one, again, r0, r1):
        assert torch.equal(torch.cat([a["index"], b["index"]]), full["index"])
        for v in range(2):
            assert torch.equal(full["x"][v], same["x"][v])
            assert torch.equal(torch.cat([a["x"][v], b["x"][v]]), full["x"][v])
        assert not torch.equal(full["x"][0], full["x"][1])  # two independent views

"""GLMC (Du et al. CVPR 2023): its two losses, its mixtures, its whole loss against a
computation written out from the released code's formulas, which head predicts, its loaders,
its bad settings and the released recipes in the dataset fragments."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from allnc.config import load_config
from allnc.errors import ConfigError
from allnc.losses import simsiam_loss, soft_target_ce
from allnc.methods import glmc as glmc_mod
from allnc.methods.base import DataInfo, StepState, build_method

COUNTS = np.array([50, 30, 18, 11, 7, 4])


def make(*extra):
    cfg = load_config("fmnist_lt_glmc", ["model.width=8", *extra])
    torch.manual_seed(0)
    return build_method(cfg, DataInfo(COUNTS, in_channels=1, image_hw=(28, 28)))


def views(n=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"x": [torch.randn(n, 1, 28, 28, generator=g) for _ in range(2)],
            "y": torch.randint(0, len(COUNTS), (n,), generator=g)}


def test_soft_target_ce_is_cross_entropy_on_one_hot_targets_and_linear_in_the_target():
    g = torch.Generator().manual_seed(0)
    z, y = torch.randn(8, 5, generator=g), torch.randint(0, 5, (8,), generator=g)
    oh = F.one_hot(y, 5).float()
    assert torch.allclose(soft_target_ce(z, oh), F.cross_entropy(z, y), atol=1e-6)
    t1, t2 = torch.rand(8, 5, generator=g), torch.rand(8, 5, generator=g)
    assert torch.allclose(soft_target_ce(z, 0.3 * t1 + 2.0 * t2), 0.3 * soft_target_ce(z, t1) + 2.0 * soft_target_ce(z, t2),
                          atol=1e-5)
    # torch's own probability-target cross-entropy, for a target that is a distribution
    p = torch.softmax(torch.randn(8, 5, generator=g), 1)
    assert torch.allclose(soft_target_ce(z, p), F.cross_entropy(z, p), atol=1e-6)


def test_simsiam_is_minus_the_cosine_and_gives_no_gradient_to_its_target():
    p = torch.tensor([[1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    z = torch.tensor([[1.0, 1.0], [0.0, -3.0]], requires_grad=True)
    loss = simsiam_loss(p, z)
    assert loss.item() == pytest.approx(-(1 / math.sqrt(2) - 1) / 2)
    loss.backward()
    assert z.grad is None and p.grad is not None and p.grad.abs().sum() > 0


def test_the_mixtures_are_mixup_of_the_first_views_and_a_box_of_the_second():
    u1, u2, r1, r2 = (torch.full((2, 1, 6, 8), float(v)) for v in (1, 2, 3, 4))
    lam, box = torch.tensor(0.25), torch.tensor([1, 4, 2, 7])
    mixed, cut, share = glmc_mod.glmc_mixtures(u1, u2, r1, r2, lam, box)
    assert torch.allclose(mixed, torch.full_like(u1, 0.25 * 1 + 0.75 * 3))
    want = u2.clone()
    want[:, :, 1:4, 2:7] = 4.0
    assert torch.equal(cut, want)
    assert share.item() == pytest.approx(15 / 48)


def test_the_draws_follow_the_released_box_rule():
    """lam ~ Beta(1, 1); the box is ceil(sqrt(1 - lam) * side) cells around a uniform centre,
    clipped at the border, so it is never larger than that and is exactly that (rounded down
    to even) away from the border."""
    torch.manual_seed(0)
    lams = []
    for _ in range(2000):
        lam, box = glmc_mod.glmc_draw(28, 20, 1.0, torch.device("cpu"))
        lam, (t, b, lft, r) = float(lam), box.tolist()
        lams.append(lam)
        ch, cw = math.ceil(28 * math.sqrt(1 - lam)), math.ceil(20 * math.sqrt(1 - lam))
        assert 0 <= t <= b <= 28 and 0 <= lft <= r <= 20
        assert b - t <= 2 * (ch // 2) and r - lft <= 2 * (cw // 2)
        if 0 < t and b < 28:
            assert b - t == 2 * (ch // 2)
    lams = np.array(lams)
    # Beta(1, 1) is uniform: mean 1/2, variance 1/12 (2000 draws: standard errors 0.0065, 0.002)
    assert abs(lams.mean() - 0.5) < 0.03 and abs(lams.var() - 1 / 12) < 0.01
    torch.manual_seed(5)
    a = glmc_mod.glmc_draw(28, 28, 1.0, torch.device("cpu"))
    torch.manual_seed(5)
    b = glmc_mod.glmc_draw(28, 28, 1.0, torch.device("cpu"))
    assert all(torch.equal(x, y) for x, y in zip(a, b))  # seeded by torch's generator


@pytest.mark.parametrize("label", ["lam", "area"])
def test_loss_equals_the_released_formulas_written_out(label, monkeypatch):
    """The released Trainer's loss, image by image from its formulas: the uniform head on
    lam-mixed one-hot targets, the re-balanced head on the same targets scaled per class by
    n_k^-lw / sum_j n_j^-lw * K, alpha = 1 - (t/T)^2, and SimSiam both ways."""
    lam, box = 0.3, [3, 21, 5, 17]
    monkeypatch.setattr(glmc_mod, "glmc_draw", lambda h, w, a, d: (torch.tensor(lam), torch.tensor(box)))
    m = make(f"method.glmc.cutmix_label={label}", "method.glmc.contrast_weight=2.5", "method.glmc.label_weighting=1.2")
    m.train()
    m.on_epoch_start(3, 10)
    bu, br = views(seed=1), views(seed=2)
    loss, logs = m.training_loss([bu, br], StepState(3, 10))

    (u1, u2), yu = bu["x"], bu["y"]
    (r1, r2), yr = br["x"], br["y"]
    mixed = lam * u1 + (1 - lam) * r1
    cut = u2.clone()
    cut[:, :, 3:21, 5:17] = r2[:, :, 3:21, 5:17]
    lam_cut = lam if label == "lam" else 1 - (18 * 12) / (28 * 28)
    w = COUNTS.astype(float) ** -1.2
    w = w / w.sum() * len(COUNTS)
    alpha = 1 - (3 / 10) ** 2
    h1, h2 = m.backbone(mixed), m.backbone(cut)

    def ce(logits, targets):  # targets: per image, a list of (class, mass)
        return sum(-sum(mass * F.log_softmax(logits[i], 0)[k] for k, mass in targets[i])
                   for i in range(len(targets))) / len(targets)

    def pairs(lam_, weighted):
        return [[(int(yu[i]), lam_ * (w[yu[i]] if weighted else 1)), (int(yr[i]), (1 - lam_) * (w[yr[i]] if weighted else 1))]
                for i in range(len(yu))]

    uniform = ce(m.uniform_head(h1), pairs(lam, False)) + ce(m.uniform_head(h2), pairs(lam_cut, False))
    rebal = ce(m.classifier(h1), pairs(lam, True)) + ce(m.classifier(h2), pairs(lam_cut, True))
    z1, z2 = m.proj(h1), m.proj(h2)
    p1, p2 = m.pred(z1), m.pred(z2)
    cos = lambda a, b: ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).mean()  # noqa: E731
    direct = alpha * uniform + (1 - alpha) * rebal + 2.5 * (-cos(p1, z2) - cos(p2, z1))
    assert torch.allclose(loss, direct, atol=1e-5)
    assert float(logs["alpha"]) == pytest.approx(alpha)


def test_the_rebalanced_head_predicts():
    m = make()
    m.eval()
    x = views(seed=3)["x"][0]
    h = m.backbone(x)
    assert torch.allclose(m(x), m.classifier(h), atol=1e-6)
    assert not torch.allclose(m(x), m.uniform_head(h))
    w, b = m.classifier_weight()
    assert w is m.classifier.weight and b is m.classifier.bias
    assert {"alpha", "label_weights"} <= set(m.state_dict())


@pytest.mark.parametrize("q", [0.0, 0.2])
def test_two_loaders_of_two_views_the_second_re_sampled(q):
    m = make(f"method.glmc.resample_weighting={q}")
    u, r = m.loaders
    assert (u.sampler, u.views) == ("instance", 2)
    assert (r.sampler, r.views, r.power) == ("power", 2, pytest.approx(1 - q))


@pytest.mark.parametrize("override,match", [
    ("method.hycon.enabled=true", "HyCon and P2P need whole labels"),
    ("train.mixup=1.0", "mixes its batches itself"),
    ("method.glmc.mix_alpha=0", r"outside \(0, inf\)"),
    ("method.glmc.cutmix_label=box", "cutmix_label"),
])
def test_bad_settings_are_refused(override, match):
    with pytest.raises(ConfigError, match=match):
        make(override)


@pytest.mark.parametrize("name,want", [
    ("cifar10_lt_glmc", {"model.width": 64, "train.batch_size": 64, "train.lr": 0.01, "train.weight_decay": 5e-3,
                         "train.warmup_epochs": 0, "train.schedule": "cosine", "train.epochs": 200,
                         "method.glmc.resample_weighting": 0.0, "method.glmc.label_weighting": 1.2,
                         "method.glmc.contrast_weight": 4.0}),
    ("cifar100_lt_glmc", {"model.width": 64, "train.batch_size": 64, "method.glmc.contrast_weight": 4.0}),
    ("imagenet_lt_glmc", {"data.augment": "sim", "train.epochs": 135, "train.batch_size": 120, "train.lr": 0.1,
                          "train.weight_decay": 2e-4, "train.warmup_epochs": 10, "method.glmc.resample_weighting": 0.2,
                          "method.glmc.label_weighting": 1.0, "method.glmc.contrast_weight": 10.0,
                          "method.glmc.proj_dim": 256}),
    ("inat2018_glmc", {"train.epochs": 120, "train.batch_size": 128, "train.weight_decay": 1e-4,
                       "method.glmc.contrast_weight": 10.0}),
])
def test_the_released_recipes_are_in_the_fragments(name, want):
    """docs/baselines.md's GLMC section: each dataset's released command."""
    cfg = load_config(name)
    for key, value in want.items():
        node = cfg
        for part in key.split("."):
            node = node[part]
        assert node == value, (name, key, node)

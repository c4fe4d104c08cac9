"""MiSLAS (Zhong et al. CVPR 2021): label-aware smoothing's factors and loss, the per-group
learning rate of its second stage, and what that stage may and may not change."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from allnc.api import load_run
from allnc.config import load_config
from allnc.engine.checkpoint import load_checkpoint
from allnc.engine.stepper import Stepper
from allnc.engine.trainer import Trainer
from allnc.losses import LabelAwareSmoothing, smoothing_factors
from allnc.methods.base import DataInfo, build_method

FAST = ["device=cpu", "train.progress=false", "model.width=8", "train.batch_size=32", "train.warmup_epochs=0",
        "train.schedule=constant", "train.lr=0.05", "data.num_workers=0"]


@pytest.mark.parametrize("shape,f", [("concave", lambda t: math.sin(math.pi * t / 2)), ("linear", lambda t: t),
                                     ("convex", lambda t: 1 - math.cos(math.pi * t / 2))])
def test_smoothing_factors_on_a_worked_example(shape, f):
    # counts 100, 50, 10: normalised counts 1, 40/90, 0; eps = tail + (head - tail) f(t)
    eps = smoothing_factors([100, 50, 10], head=0.3, tail=0.1, shape=shape)
    want = [0.1 + 0.2 * f(t) for t in (1.0, 4 / 9, 0.0)]
    assert eps.tolist() == pytest.approx(want, abs=1e-7)
    assert (eps[0], eps[2]) == (pytest.approx(0.3), pytest.approx(0.1))  # the ends whatever the shape


def test_concave_smooths_the_middle_classes_most():
    counts = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]  # CIFAR-10-LT, imbalance 100
    c, lin, v = (smoothing_factors(counts, 0.3, 0.0, s) for s in ("concave", "linear", "convex"))
    assert bool((c[1:-1] > lin[1:-1]).all() and (lin[1:-1] > v[1:-1]).all())
    assert bool((c[:-1] >= c[1:]).all())  # more images, more smoothing


def test_equal_counts_give_torch_label_smoothing_and_zero_gives_cross_entropy():
    g = torch.Generator().manual_seed(0)
    z, y = torch.randn(16, 5, generator=g), torch.randint(0, 5, (16,), generator=g)
    las = LabelAwareSmoothing([7] * 5, head=0.2, tail=0.0)
    assert torch.allclose(las(z, y), F.cross_entropy(z, y, label_smoothing=0.2), atol=1e-6)
    assert torch.allclose(LabelAwareSmoothing([9, 3, 1, 1, 1], 0.0, 0.0)(z, y), F.cross_entropy(z, y), atol=1e-6)


def test_each_image_is_smoothed_by_its_own_class_factor():
    counts = [100, 50, 10]
    g = torch.Generator().manual_seed(1)
    z, y = torch.randn(9, 3, generator=g), torch.tensor([0, 1, 2, 0, 1, 2, 2, 2, 0])
    eps = smoothing_factors(counts, 0.4, 0.05)
    # one image at a time, each with torch's uniform label smoothing at its class's factor
    want = torch.stack([F.cross_entropy(z[i:i + 1], y[i:i + 1], label_smoothing=float(eps[y[i]])) for i in range(9)])
    assert torch.allclose(LabelAwareSmoothing(counts, 0.4, 0.05)(z, y), want.mean(), atol=1e-6)


@pytest.mark.parametrize("compiled", [False, True])
def test_the_classifier_learns_at_its_fraction_of_the_rate(compiled):
    cfg = load_config("fmnist_lt_mislas", ["model.width=8", "init_from=/unused", "method.mislas.lr_factor=0.25"])
    m = build_method(cfg, DataInfo(np.array([50, 20, 5]), in_channels=1, image_hw=(28, 28)))
    st = Stepper(m, cfg, torch.device("cpu"), amp=False, compile_=compiled)
    st.set_lr(0.08)
    lrs = [float(g["lr"]) for g in st.opt.param_groups]
    assert lrs == pytest.approx([0.02, 0.08])
    assert [g["params"] for g in st.opt.param_groups] == [list(m.classifier.parameters()), [m.logit_scale]]
    if compiled:  # a compiled step reads each group's rate from its own tensor
        assert st.opt.param_groups[0]["lr"] is not st.opt.param_groups[1]["lr"]
    # no backbone parameter is given to the optimizer
    assert sum(len(g["params"]) for g in st.opt.param_groups) == 3


@pytest.fixture(scope="module")
def stage1(tiny_learnable_fmnist, tmp_path_factory):
    base = [f"data.root={tiny_learnable_fmnist}", "data.imbalance_factor=10", *FAST]
    out = tmp_path_factory.mktemp("mislas") / "stage1"
    Trainer(load_config("fmnist_lt_ce_mixup", base + ["train.epochs=2"]), out).fit()
    return base, out


def _stage2(stage1, out, *extra, config="fmnist_lt_mislas"):
    base, src = stage1
    Trainer(load_config(config, base + ["train.epochs=2", f"init_from={src}", *extra]), out).fit()
    return load_checkpoint(src / "checkpoint.pt")["method"], load_checkpoint(out / "checkpoint.pt")["method"]


def test_stage_two_changes_only_the_classifier_and_its_scale(stage1, tmp_path):
    before, after = _stage2(stage1, tmp_path / "s2")
    bb = [k for k in before if k.startswith("backbone.")]
    assert bb and all(torch.equal(before[k], after[k]) for k in bb)  # weights and BN statistics
    assert not torch.equal(before["classifier.weight"], after["classifier.weight"])
    assert not torch.equal(after["logit_scale"], torch.ones_like(after["logit_scale"]))
    # the predictions are the scaled classifier's: what the NC metrics and post-hoc methods read
    run = load_run(tmp_path / "s2", device="cpu")
    x = torch.randn(6, 1, 28, 28)
    with torch.no_grad():
        h, logits = run.method.features(x)
        W, b = run.method.classifier_weight()
    assert torch.allclose(logits, h @ W.T + b, atol=1e-5)


@pytest.mark.parametrize("config,extra", [("fmnist_lt_mislas", ["method.mislas.shift_bn=true"]),
                                          ("fmnist_lt_crt", ["method.crt.shift_bn=true"])])
def test_shift_bn_moves_only_the_bn_statistics(stage1, tmp_path, config, extra):
    # cRT shifts them by default, as its released code does (the Fashion-MNIST study's runs too);
    # MiSLAS keeps them unless told (its trials chose that on Fashion-MNIST)
    assert load_config("cifar10_lt_crt", ["init_from=/x"]).method.crt.shift_bn
    assert load_config("fmnist_lt_crt", ["init_from=/x"]).method.crt.shift_bn
    assert not load_config("fmnist_lt_mislas", ["init_from=/x"]).method.mislas.shift_bn
    before, after = _stage2(stage1, tmp_path / "s2", *extra, config=config)
    stats = [k for k in before if k.startswith("backbone.") and k.endswith(("running_mean", "running_var"))]
    rest = [k for k in before if k.startswith("backbone.") and k not in stats and not k.endswith("num_batches_tracked")]
    assert stats and all(not torch.equal(before[k], after[k]) for k in stats)
    assert rest and all(torch.equal(before[k], after[k]) for k in rest)  # conv and BN weights, BN biases


def test_stage_two_goes_on_from_the_first_stage_classifier(stage1, tmp_path):
    # at a vanishing classifier rate and no logit scale the classifier stays where stage 1 left it;
    # reset_classifier=true starts it afresh instead
    still = ["method.mislas.lr_factor=1e-9", "method.mislas.logit_scale=false"]
    before, kept = _stage2(stage1, tmp_path / "kept", *still)
    _, reset = _stage2(stage1, tmp_path / "reset", *still, "method.mislas.reset_classifier=true")
    assert torch.allclose(kept["classifier.weight"], before["classifier.weight"], atol=1e-6)
    assert not torch.allclose(reset["classifier.weight"], before["classifier.weight"], atol=1e-2)
    assert torch.equal(kept["logit_scale"], torch.ones_like(kept["logit_scale"]))


def test_an_export_of_stage_two_predicts_what_the_run_does(stage1, tmp_path):
    # the logit scale is part of the model: an export, built from its config without the
    # first stage's run, gives the run's logits
    from allnc.engine.predict import export_run, load_model

    _stage2(stage1, tmp_path / "s2")
    export_run(tmp_path / "s2", tmp_path / "exp")
    x = torch.randn(5, 1, 28, 28)
    run, exp = load_model(tmp_path / "s2", device="cpu"), load_model(tmp_path / "exp", device="cpu")
    assert torch.equal(run.logits(x), exp.logits(x))
    scale = run.method.logit_scale.detach()
    with torch.no_grad():
        assert torch.allclose(run.logits(x), run.method.classifier(run.method.backbone(x)) * scale, atol=1e-5)


def test_a_fixed_trunk_under_a_fresh_block_in_both_stages(tiny_learnable_fmnist, tmp_path):
    # MiSLAS's Places-LT model in miniature: a pretrained network fixed whole but for a new last
    # block. Stage 1 trains that block and the classifier; stage 2 neither reads the pretrained
    # file (gone by then) nor moves a backbone weight, and with shift_bn only the new block's BN
    # statistics move (the fixed trunk's are constants)
    from allnc.errors import ConfigError
    from allnc.models import build_backbone

    src = build_backbone(load_config("fmnist_lt_ce", ["model.width=8"]).model, 1)
    g = torch.Generator().manual_seed(1)
    for k, v in src.state_dict().items():
        if k.endswith("running_mean"):
            v.copy_(torch.randn(v.shape, generator=g) * 0.1)
    pre = tmp_path / "pre.pt"
    torch.save(src.state_dict(), pre)
    theirs = src.state_dict()
    block = next(n for n, m in src.named_modules() if m is src.stages()[-1][-1])
    last = {k for k in theirs if k.startswith(f"{block}.")}
    trunk = [k for k in theirs if k not in last and not k.endswith("num_batches_tracked")]
    model = [f"model.pretrained={pre}", "model.frozen=all_but_last_block", "model.fresh_last_block=true"]
    base = [f"data.root={tiny_learnable_fmnist}", "data.imbalance_factor=10", *FAST, *model]
    Trainer(load_config("fmnist_lt_ce_mixup", base + ["train.epochs=2"]), tmp_path / "s1").fit()
    s1 = load_checkpoint(tmp_path / "s1" / "checkpoint.pt")["method"]
    assert trunk and all(torch.equal(s1[f"backbone.{k}"], theirs[k]) for k in trunk)
    convs = [k for k in last if k.endswith("conv1.weight") or k.endswith("conv2.weight")]
    assert convs and all(not torch.allclose(s1[f"backbone.{k}"], theirs[k], atol=1e-3) for k in convs)

    pre.unlink()
    Trainer(load_config("fmnist_lt_mislas", base + ["train.epochs=2", f"init_from={tmp_path / 's1'}",
                                                    "method.mislas.shift_bn=true"]), tmp_path / "s2").fit()
    s2 = load_checkpoint(tmp_path / "s2" / "checkpoint.pt")["method"]
    stats = {k for k in s1 if k.startswith("backbone.") and k.endswith(("running_mean", "running_var"))}
    moved = {k for k in s1 if k.startswith("backbone.") and not k.endswith("num_batches_tracked")
             and not torch.equal(s1[k], s2[k])}
    assert moved and moved == {k for k in stats if k[len("backbone."):] in last}  # the new block's BN statistics
    assert not torch.equal(s1["classifier.weight"], s2["classifier.weight"])
    # the finished run evaluates without the pretrained file too, as it scored at its end
    top1 = load_run(tmp_path / "s2", device="cpu").evaluate()["top1"]
    assert top1 == pytest.approx(json.loads((tmp_path / "s2" / "metrics.json").read_text())["top1"])
    # a second stage whose model has another frozen rule names the key to give
    with pytest.raises(ConfigError, match="model.frozen=all_but_last_block"):
        Trainer(load_config("fmnist_lt_mislas", base[:-3] + ["train.epochs=1", f"init_from={tmp_path / 's1'}"]),
                tmp_path / "s3")


INAT_STATS = {"data.mean": [0.466, 0.471, 0.380], "data.std": [0.195, 0.194, 0.192]}
PLACES_MODEL = {"model.name": "resnet152", "model.pretrained": "resnet152-394f9c45.pth",
                "model.frozen": "all_but_last_block", "model.fresh_last_block": True}


@pytest.mark.parametrize("name,want", [
    ("imagenet_lt_ce_mixup", {"data.augment": "jitter", "train.epochs": 180, "train.mixup": 0.2, "train.lr": 0.1,
                              "train.batch_size": 256, "train.weight_decay": 5e-4, "train.warmup_epochs": 0}),
    ("inat2018_ce_mixup", {"data.augment": "jitter", **INAT_STATS, "train.epochs": 200, "train.mixup": 0.2,
                           "train.weight_decay": 1e-4, "train.warmup_epochs": 0}),
    ("places_lt_ce_mixup", {"data.augment": "jitter", **PLACES_MODEL, "train.epochs": 90, "train.batch_size": 256,
                            "train.lr": 0.1, "train.schedule": "cosine", "train.warmup_epochs": 0,
                            "train.weight_decay": 5e-4, "train.mixup": 0.2}),
    ("imagenet_lt_mislas", {"data.augment": "jitter", "method.mislas.smooth_head": 0.3, "method.mislas.smooth_tail": 0.0,
                            "method.mislas.shift_bn": True, "method.mislas.lr_factor": 0.05}),
    ("inat2018_mislas", {"data.augment": "jitter", **INAT_STATS, "method.mislas.lr_factor": 0.05}),
    ("places_lt_mislas", {"data.augment": "jitter", **PLACES_MODEL, "train.epochs": 10, "train.lr": 0.1,
                          "train.batch_size": 256, "train.weight_decay": 5e-4, "train.mixup": 0.0,
                          "method.mislas.smooth_head": 0.4, "method.mislas.smooth_tail": 0.1,
                          "method.mislas.shift_bn": True, "method.mislas.lr_factor": 0.05,
                          "method.mislas.sampler": "class_aware", "method.mislas.reset_classifier": False}),
])
def test_the_released_large_image_recipes_are_in_the_dataset_fragments(name, want):
    from omegaconf import OmegaConf

    cfg = load_config(name)
    got = {key: OmegaConf.select(cfg, key) for key in want}
    assert {k: list(v) if isinstance(want[k], list) else v for k, v in got.items()} == want

"""Method strategies: BBN as a configuration, the adaptor, DRW switch, cRT, and that every
built-in Fashion-MNIST-LT method trains through the one engine."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from allnc.config import builtin_names, load_config
from allnc.engine.checkpoint import load_checkpoint
from allnc.engine.trainer import Trainer
from allnc.methods.allnc import adaptor_alpha
from allnc.methods.base import DataInfo, StepState, build_method

COUNTS = np.array([50, 30, 18, 11, 7, 4])
FAST = ["device=cpu", "train.progress=false", "model.width=8", "train.batch_size=32", "train.warmup_epochs=0",
        "train.schedule=constant", "train.lr=0.05", "data.num_workers=0"]


def make(config, *extra):
    cfg = load_config(config, ["model.width=8", *extra])
    torch.manual_seed(0)
    return build_method(cfg, DataInfo(COUNTS, in_channels=1, image_hw=(28, 28)))


def batch(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(n, 1, 28, 28, generator=g), "y": torch.randint(0, len(COUNTS), (n,), generator=g)}


@pytest.mark.parametrize("epoch", [0, 3, 7])
def test_bbn_config_equals_a_direct_bbn_computation(epoch):
    m = make("fmnist_lt_bbn")
    m.train()
    T = 10
    m.on_epoch_start(epoch, T)
    bu, br = batch(seed=1), batch(seed=2)
    loss, _ = m.training_loss([bu, br], StepState(epoch, T))
    # BBN (Zhou et al. 2020) written out: each branch on its own batch, alpha = 1 - (t/T)^2,
    # one classifier on the weighted concatenation, alpha-weighted cross-entropies.
    a = 1 - (epoch / T) ** 2
    net = m.net
    f_c = net.branch_c(net.trunk(bu["x"]))
    f_r = net.branch_r(net.trunk(br["x"]))
    logits = F.linear(torch.cat([a * f_c, (1 - a) * f_r], 1), m.classifier.weight, m.classifier.bias)
    direct = a * F.cross_entropy(logits, bu["y"]) + (1 - a) * F.cross_entropy(logits, br["y"])
    assert torch.allclose(loss, direct, atol=1e-6)
    assert m.loaders[1].sampler == "reversed" and not m.use_hycon and not m.use_p2p


def test_adaptor_schedules():
    T = 200
    for t in (0, 50, 100, 160, 199):
        assert adaptor_alpha("parabolic", t, T, gamma=2) == pytest.approx(1 - (t / T) ** 2)
        assert adaptor_alpha("parabolic", t, T, gamma=3) == pytest.approx(1 - (t / T) ** 3)
        assert adaptor_alpha("linear", t, T) == pytest.approx(1 - t / T)
        assert adaptor_alpha("cosine", t, T) == pytest.approx(math.cos(math.pi / 2 * t / T))
        assert adaptor_alpha("step", t, T, step_at=0.8) == (1.0 if t < 160 else 0.0)
    m = make("fmnist_lt_allnc")
    m.on_epoch_start(120, T)
    assert float(m.alpha) == pytest.approx(1 - 0.36) and "alpha" in m.state_dict()


def test_allnc_loss_is_bbn_plus_its_weighted_terms():
    """With the same weights, AllNC's loss minus BBN's equals alpha*lambda_H*HyCon +
    (1-alpha)*lambda_P*P2P, each computed separately from the logged values."""
    T, epoch = 10, 4
    allnc = make("fmnist_lt_allnc", "method.hycon.weight=0.7", "method.p2p.weight=1.3")
    bbn = make("fmnist_lt_bbn")
    bbn.load_state_dict({k: v for k, v in allnc.state_dict().items() if k in bbn.state_dict()})
    for m in (allnc, bbn):
        m.train()
        m.on_epoch_start(epoch, T)
    bu, br = batch(seed=3), batch(seed=4)
    l_a, logs = allnc.training_loss([bu, br], StepState(epoch, T))
    l_b, _ = bbn.training_loss([bu, br], StepState(epoch, T))
    a = 1 - (epoch / T) ** 2
    expected = a * 0.7 * logs["loss_hycon"] + (1 - a) * 1.3 * logs["loss_p2p"]
    assert torch.allclose(l_a - l_b, expected, atol=1e-5)
    assert logs["loss_hycon"] > 0 and logs["loss_p2p"] > 0
    # the step updated both class-mean memories for the classes it saw
    assert bool(allnc.mem_c.seen[bu["y"]].all()) and bool(allnc.mem_r.seen[br["y"]].all())


def test_drw_switches_on_at_the_stated_epoch():
    m = make("fmnist_lt_ldam_drw", "method.ldam.drw_start=0.8")
    for epoch, on in ((0, False), (159, False), (160, True), (199, True)):
        m.on_epoch_start(epoch, 200)
        assert bool(m.drw_on) is on
    b = batch()
    h, cos = m.features(b["x"])
    m.on_epoch_start(0, 200)
    before = m.loss_fn(cos, b["y"], h)
    m.on_epoch_start(160, 200)
    after = m.loss_fn(cos, b["y"], h)
    assert not torch.allclose(before, after)  # the weights changed the loss


def test_crt_leaves_every_backbone_tensor_unchanged(tiny_learnable_fmnist, tmp_path):
    base = [f"data.root={tiny_learnable_fmnist}", "data.imbalance_factor=10", *FAST]
    Trainer(load_config("fmnist_lt_ce", base + ["train.epochs=2"]), tmp_path / "ce").fit()
    before = load_checkpoint(tmp_path / "ce" / "checkpoint.pt")["method"]
    Trainer(load_config("fmnist_lt_crt", base + ["train.epochs=2", f"init_from={tmp_path / 'ce'}"]),
            tmp_path / "crt").fit()
    after = load_checkpoint(tmp_path / "crt" / "checkpoint.pt")["method"]
    bb = [k for k in before if k.startswith("backbone.")]
    assert bb and all(torch.equal(before[k], after[k]) for k in bb)  # weights and BN statistics
    assert not torch.equal(before["classifier.weight"], after["classifier.weight"])


FMNIST_METHODS = sorted(n for n in builtin_names() if n.startswith("fmnist_lt_") and n != "fmnist_lt_crt")


@pytest.mark.parametrize("config", FMNIST_METHODS)
def test_every_fmnist_method_trains_through_the_engine(config, tiny_learnable_fmnist, tmp_path):
    # balanced tiny data (imbalance factor 1) that every method should learn in a few epochs
    cfg = load_config(config, [f"data.root={tiny_learnable_fmnist}", "data.imbalance_factor=1", *FAST,
                               "train.epochs=6", "train.eval_every=6"])
    m = Trainer(cfg, tmp_path / "run").fit()
    hist = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(h["loss"]) for h in hist)
    assert m["top1"] >= 60, (config, m["top1"])  # 10% is chance


SMALL = {"fmnist_lt": (10, 1), "cifar10_lt": (10, 3), "cifar100_lt": (100, 3)}


@pytest.mark.parametrize("prefix", sorted(SMALL))
def test_every_small_builtin_config_builds_for_its_class_count(prefix):
    """E.g. a 100-class fixed ETF needs d >= 99: the CIFAR-100 ETF configs must ask for it."""
    K, C = SMALL[prefix]
    counts = np.array([int(500 * 0.01 ** (i / (K - 1))) for i in range(K)])
    names = [n for n in builtin_names() if n.startswith(prefix + "_")]
    assert len(names) >= 15
    for n in names:
        cfg = load_config(n, ["init_from=/nonexistent"] if n.endswith("_crt") else [])
        m = build_method(cfg, DataInfo(counts, in_channels=C))
        W, _ = m.classifier_weight()
        assert W.shape[0] == K, n

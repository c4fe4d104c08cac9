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
from allnc.errors import ConfigError
from allnc.methods.gbbn import adaptor_alpha
from allnc.methods.base import DataInfo, StepState, build_method

COUNTS = np.array([50, 30, 18, 11, 7, 4])
FAST = ["device=cpu", "train.progress=false", "model.width=8", "train.batch_size=32", "train.warmup_epochs=0",
        "train.schedule=constant", "train.lr=0.05", "data.num_workers=0"]


# BBN's own sampler and inference mix (the Fashion-MNIST config holds the validation-chosen ones)
BBN_OWN = ("method.gbbn.sampler=reversed", "method.gbbn.inference_mix=half")
# HyCon and P2P in their plain written forms (AllNC's defaults add centring, both anchors and
# equinorm; tests/test_allnc_options.py checks those)
PLAIN_TERMS = ("method.hycon.centre=false", "method.hycon.anchors=conventional", "method.p2p.equinorm=0")

def make(config, *extra):
    cfg = load_config(config, ["model.width=8", *extra])
    torch.manual_seed(0)
    return build_method(cfg, DataInfo(COUNTS, in_channels=1, image_hw=(28, 28)))


def batch(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(n, 1, 28, 28, generator=g), "y": torch.randint(0, len(COUNTS), (n,), generator=g)}


@pytest.mark.parametrize("epoch,scale", [(0, 1.0), (3, 1.0), (7, 1.0), (3, 2.0)])
def test_bbn_config_equals_a_direct_bbn_computation(epoch, scale):
    """BBN (Zhou et al. 2020) written out from its paper and released code, not from this
    package's helpers: each branch on its own batch, alpha = 1 - (t/T)^2, one classifier on
    scale * [alpha f_c ; (1 - alpha) f_r] (the released code's bbn_mix multiplies by 2), the
    alpha-weighted cross-entropies; at test time scale * [0.5 f_c ; 0.5 f_r] of one image."""
    m = make("fmnist_lt_bbn", f"method.gbbn.mix_scale={scale}", *BBN_OWN)
    m.train()
    T = 10
    m.on_epoch_start(epoch, T)
    bu, br = batch(seed=1), batch(seed=2)
    loss, _ = m.training_loss([bu, br], StepState(epoch, T))
    # a fresh copy (same weights) computes BBN by hand, module by module
    m2 = make("fmnist_lt_bbn", f"method.gbbn.mix_scale={scale}", *BBN_OWN)
    m2.train()
    a = 1 - (epoch / T) ** 2
    W, b = m2.classifier.weight, m2.classifier.bias
    f_c = m2.net.branch_c(m2.net.trunk(bu["x"]))  # two network passes, one per batch, as BBN's code
    f_r = m2.net.branch_r(m2.net.trunk(br["x"]))
    z = scale * torch.cat([a * f_c, (1 - a) * f_r], 1) @ W.T + b
    direct = a * F.cross_entropy(z, bu["y"]) + (1 - a) * F.cross_entropy(z, br["y"])
    assert torch.allclose(loss, direct, atol=1e-6)
    assert m.loaders[1].sampler == "reversed" and not m.use_hycon and not m.use_p2p
    m2.eval()
    x = batch(seed=5)["x"]
    t = m2.net.trunk(x)
    want = scale * torch.cat([0.5 * m2.net.branch_c(t), 0.5 * m2.net.branch_r(t)], 1) @ W.T + b
    assert torch.allclose(m2(x), want, atol=1e-6)


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


def _hycon_reference(z, y, c, valid, tau):
    """HyCon written out anchor by anchor (docs/method.md), in float64: candidates are the
    other batch features and the valid normalised class means; positives share the label;
    the denominator averages each class's candidates before summing over classes."""
    z = F.normalize(z.double(), dim=1)
    c = F.normalize(c.double(), dim=1)
    total, n = 0.0, 0
    for i in range(len(y)):
        cands = [(z[j], int(y[j])) for j in range(len(y)) if j != i] + [(c[k], k) for k in range(len(c)) if valid[k]]
        pos = [v for v, lab in cands if lab == int(y[i])]
        if not pos:
            continue
        by_class = {}
        for v, lab in cands:
            by_class.setdefault(lab, []).append(torch.exp(z[i] @ v / tau))
        denom = sum(sum(e) / len(e) for e in by_class.values())
        total += float(-sum(torch.log(torch.exp(z[i] @ p / tau) / denom) for p in pos) / len(pos))
        n += 1
    return total / n


def _p2p_reference(mu, W, valid, tau):
    """P2P's symmetric peer contrast written out (docs/method.md), in float64."""
    v = valid.bool()
    mu, W = mu.double(), W.double()
    centre = mu[v].mean(0)
    mt = F.normalize(mu - centre, dim=1)
    w = F.normalize(W, dim=1)
    K = len(mu)
    S = mt @ w.T
    terms = []
    for k in range(K):
        if not v[k]:
            continue
        row = -torch.log(torch.exp(S[k, k] / tau) / torch.exp(S[k] / tau).sum())
        col = -torch.log(torch.exp(S[k, k] / tau) / torch.exp(S[v, k] / tau).sum())
        terms.append(0.5 * (row + col))
    return float(sum(terms) / len(terms))


def test_allnc_loss_equals_an_independent_recomputation_after_a_warm_up_step():
    """After one warm-up step (memories hold means of other batches), AllNC's loss equals
    BBN's loss (logits of s [alpha h_c; (1 - alpha) h_r], s = AllNC's mix scale 2) + alpha lambda_H
    HyCon(h_c; memory c) + (1 - alpha) lambda_P P2P([mu_c; mu_r], W),
    with HyCon and P2P recomputed here from their written definitions, the means mixed by
    hand (batch mean where present, memory elsewhere). Reading the wrong memory, skipping the
    warm-up state or a wrong weight would each break the equality."""
    T, epoch = 10, 4
    m = make("fmnist_lt_allnc", "method.hycon.weight=0.7", "method.p2p.weight=1.3", *PLAIN_TERMS)
    assert m.mix_scale == 2.0
    m.train()
    m.on_epoch_start(epoch, T)
    m.training_loss([batch(seed=7), batch(seed=8)], StepState(epoch, T))  # warm-up: fills the memories
    assert bool(m.mem_c.seen.any()) and bool(m.mem_r.seen.any())
    mem_c, seen_c = m.mem_c.means.clone(), m.mem_c.seen.clone()
    mem_r, seen_r = m.mem_r.means.clone(), m.mem_r.seen.clone()
    bu, br = batch(seed=3), batch(seed=4)
    loss, logs = m.training_loss([bu, br], StepState(epoch, T))
    a = 1 - (epoch / T) ** 2
    with torch.no_grad():
        h_c, h_r = m.net.forward_both(bu["x"], br["x"])
        z = m.mix_scale * torch.cat([a * h_c, (1 - a) * h_r], 1) @ m.classifier.weight.T + m.classifier.bias
        bbn = a * F.cross_entropy(z, bu["y"]) + (1 - a) * F.cross_entropy(z, br["y"])

        def mixed(h, y, mem, seen):
            out = mem.clone()
            present = torch.zeros(len(COUNTS), dtype=torch.bool)
            for k in range(len(COUNTS)):
                if (y == k).any():
                    out[k] = h[y == k].mean(0)
                    present[k] = True
            return out, present

        mc, pc = mixed(h_c, bu["y"], mem_c, seen_c)
        mr, pr = mixed(h_r, br["y"], mem_r, seen_r)
        # HyCon's class-mean candidates: the memory of the classes seen before this step
        hy = _hycon_reference(h_c, bu["y"], mem_c, seen_c, tau=0.1)
        p2 = _p2p_reference(torch.cat([mc, mr], 1), m.classifier.weight, (seen_c | pc) & (seen_r | pr), tau=0.1)
    expected = float(bbn) + a * 0.7 * hy + (1 - a) * 1.3 * p2
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    assert float(logs["loss_hycon"]) == pytest.approx(hy, rel=1e-5)
    assert float(logs["loss_p2p"]) == pytest.approx(p2, rel=1e-5)


def test_drw_switches_on_at_the_stated_epoch():
    m = make("fmnist_lt_ldam_drw", "method.ldam.drw_start=0.8")
    for epoch, on in ((0, False), (159, False), (160, True), (199, True)):
        m.on_epoch_start(epoch, 200)
        assert bool(m.drw_on) is on
    # by default at the first learning-rate decay (LDAM-DRW's recipe): epoch 9 of 12 here
    d = make("fmnist_lt_ldam_drw")
    assert d.cfg.train.milestones[0] == 9 and d.drw_start_epoch(12) == 9
    assert make("cifar10_lt_ldam_drw").drw_start_epoch(200) == 160
    b = batch()
    h, cos = m.features(b["x"])
    m.on_epoch_start(0, 200)
    before = m.loss_fn(cos, b["y"], h)
    m.on_epoch_start(160, 200)
    after = m.loss_fn(cos, b["y"], h)
    assert not torch.allclose(before, after)  # the weights changed the loss


def test_crt_without_the_bn_shift_leaves_every_backbone_tensor_unchanged(tiny_learnable_fmnist, tmp_path):
    # (its default, the released code's, lets the BN statistics move: tests/test_mislas.py)
    base = [f"data.root={tiny_learnable_fmnist}", "data.imbalance_factor=10", *FAST]
    Trainer(load_config("fmnist_lt_ce", base + ["train.epochs=2"]), tmp_path / "ce").fit()
    before = load_checkpoint(tmp_path / "ce" / "checkpoint.pt")["method"]
    Trainer(load_config("fmnist_lt_crt", base + ["train.epochs=2", f"init_from={tmp_path / 'ce'}",
                                                 "method.crt.shift_bn=false"]),
            tmp_path / "crt").fit()
    after = load_checkpoint(tmp_path / "crt" / "checkpoint.pt")["method"]
    bb = [k for k in before if k.startswith("backbone.")]
    assert bb and all(torch.equal(before[k], after[k]) for k in bb)  # weights and BN statistics
    assert not torch.equal(before["classifier.weight"], after["classifier.weight"])
    # a stride-2 stem has the same weights, so only the run's config can tell the backbones apart
    with pytest.raises(ConfigError, match=r"trained model.stem_stride=1 but this config has model.stem_stride=2: "
                                          r"add model.stem_stride=1"):
        Trainer(load_config("fmnist_lt_crt", base + ["model.stem_stride=2", f"init_from={tmp_path / 'ce'}"]),
                tmp_path / "crt2")


def needs_init_from(name: str) -> bool:
    """Second stages, trained on another run's frozen backbone (cRT, MiSLAS, MaxNorm: their own tests)."""
    from allnc.compose import method_of
    from allnc.methods import METHODS
    from allnc.methods.crt import FrozenBackbone

    return issubclass(METHODS.get(method_of(name)), FrozenBackbone)


NEED_INIT_FROM = tuple(n for n in builtin_names() if n.startswith("fmnist_lt_") and needs_init_from(n))

# every method once, and the fast preset once (its variants of the other methods differ only in the
# backbone's stem and the schedule, which the 6-epoch override replaces)
FMNIST_METHODS = sorted(n for n in builtin_names() if n.startswith("fmnist_lt_") and n not in NEED_INIT_FROM
                        and (not n.endswith("_fast") or n == "fmnist_lt_allnc_fast"))


@pytest.mark.parametrize("config", FMNIST_METHODS)
def test_every_fmnist_method_trains_through_the_engine(config, tiny_learnable_fmnist, tmp_path):
    # balanced tiny data (imbalance factor 1) that every method should learn in a few epochs
    cfg = load_config(config, [f"data.root={tiny_learnable_fmnist}", "data.imbalance_factor=1", *FAST,
                               "train.epochs=6", "train.eval_every=6"])
    m = Trainer(cfg, tmp_path / "run").fit()
    hist = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(h["loss"]) for h in hist)
    # 10% is chance. Six epochs on 600 images vary with the seed: AllNC's fast preset (the mix's
    # factor 2, half resolution) gave 50, 90 and 80.5 at seeds 0-2, so the bar is well below that
    assert m["top1"] >= 40, (config, m["top1"])


SMALL = {"fmnist_lt": (10, 1), "cifar10_lt": (10, 3), "cifar100_lt": (100, 3)}


@pytest.mark.parametrize("prefix", sorted(SMALL))
def test_every_small_builtin_config_builds_for_its_class_count(prefix):
    """E.g. a 100-class fixed ETF needs d >= 99: the CIFAR-100 ETF configs must ask for it."""
    K, C = SMALL[prefix]
    counts = np.array([int(500 * 0.01 ** (i / (K - 1))) for i in range(K)])
    names = [n for n in builtin_names() if n.startswith(prefix + "_")]
    assert len(names) >= 15
    for n in names:
        cfg = load_config(n, ["init_from=/nonexistent"] if needs_init_from(n) else [])
        m = build_method(cfg, DataInfo(counts, in_channels=C))
        W, _ = m.classifier_weight()
        assert W.shape[0] == K, n

"""The reconstruction's options, each by its defining property: the inference mix, HyCon
centred on the class-balanced mean, HyCon anchors on both branches, P2P's equinorm term."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from allnc.config import load_config
from allnc.errors import ConfigError
from allnc.losses import HyConLoss, P2PLoss, etf_cosines
from allnc.methods.gbbn import adaptor_alpha
from allnc.methods.base import DataInfo, StepState, build_method

COUNTS = np.array([50, 30, 18, 11, 7, 4])


def make(config, *extra):
    cfg = load_config(config, ["model.width=8", "train.epochs=10", *extra])
    torch.manual_seed(0)
    return build_method(cfg, DataInfo(COUNTS, in_channels=1, image_hw=(28, 28)))


def batch(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(n, 1, 28, 28, generator=g), "y": torch.randint(0, len(COUNTS), (n,), generator=g)}


@pytest.mark.parametrize("mix,scale", [("half", 1.0), ("final", 1.0), ("final", 2.0)])
def test_inference_mix_is_the_stated_feature(mix, scale):
    m = make("fmnist_lt_allnc", f"method.gbbn.inference_mix={mix}", f"method.gbbn.mix_scale={scale}")
    m.eval()
    x = batch()["x"]
    a = 0.5 if mix == "half" else 1 - (9 / 10) ** 2  # the adaptor's alpha in the last of 10 epochs
    assert a == pytest.approx(adaptor_alpha("parabolic", 9, 10)) or mix == "half"
    t = m.net.trunk(x)
    want = scale * torch.cat([a * m.net.branch_c(t), (1 - a) * m.net.branch_r(t)], 1)
    h, logits = m.features(x)
    assert torch.allclose(h, want, atol=1e-6)
    assert torch.allclose(logits, want @ m.classifier.weight.T + m.classifier.bias, atol=1e-5)


@pytest.mark.parametrize("mix", ["half", "final", "val"])
def test_evaluations_during_training_use_the_epochs_alpha_except_with_the_half_mix(mix):
    """With final and val the model predicts, epoch by epoch, with the alpha its classifier is
    learning in that epoch (the last one's is the final mix); BBN's half mix is 0.5 throughout."""
    m = make("fmnist_lt_allnc", f"method.gbbn.inference_mix={mix}", *(["data.val_per_class=2"] * (mix == "val")))
    x = batch()["x"]
    built = float(m.infer_alpha)
    seen = []
    for epoch in range(10):
        m.on_epoch_start(epoch, 10)
        m.eval()
        a = 0.5 if mix == "half" else adaptor_alpha("parabolic", epoch, 10)
        _, logits = m.features(x)
        assert torch.allclose(logits, m.mixed_logits(*m.branch_features(x), a), atol=1e-5)
        seen.append(float(m.infer_alpha))
    assert len(set(seen)) == (1 if mix == "half" else 10)
    if mix != "val":  # what a model built for the finished run holds: the end of training gives the same
        assert seen[-1] == pytest.approx(built)


def test_inference_mix_val_picks_the_best_validation_mix_and_keeps_it():
    m = make("fmnist_lt_allnc", "method.gbbn.inference_mix=val", "data.val_per_class=2")
    m.eval()
    data = [(batch(seed=s)["x"], batch(seed=s)["y"]) for s in (11, 12)]
    out = m.calibrate(lambda: iter(data))
    # recompute every candidate's accuracy here
    accs = {}
    for i in range(21):
        a = round(0.05 * i, 2)
        hits = 0
        for x, y in data:
            t = m.net.trunk(x)
            f = m.mix_scale * torch.cat([a * m.net.branch_c(t), (1 - a) * m.net.branch_r(t)], 1)
            hits += int((m.classifier(f).argmax(1) == y).sum())
        accs[a] = 100 * hits / 24
    best = max(accs.values())
    choice = min((a for a, v in accs.items() if v == best), key=lambda a: abs(a - 0.5))
    assert out["inference_alpha"] == choice and float(m.infer_alpha) == pytest.approx(choice)
    assert out["val_top1_by_alpha"]["0.5"] == pytest.approx(accs[0.5], abs=1e-3)
    assert out["final_alpha"] == pytest.approx(1 - 0.81)
    assert "infer_alpha" in m.state_dict()
    with pytest.raises(ConfigError, match="give data.val_per_class"):
        load_config("fmnist_lt_allnc", ["method.gbbn.inference_mix=val"])


def _calibrate_worker(rank, world, port, path):
    import json

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        m = make("fmnist_lt_allnc", "method.gbbn.inference_mix=val", "data.val_per_class=2")
        m.eval()
        data = [(batch(seed=s)["x"][rank::world], batch(seed=s)["y"][rank::world]) for s in (11, 12, 13)]
        out = m.calibrate(lambda: iter(data))
        with open(f"{path}.{rank}", "w") as f:
            json.dump({**out, "buffer": float(m.infer_alpha)}, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
def test_inference_mix_val_under_two_ranks_is_chosen_from_the_whole_split(tmp_path):
    """Each rank sees every other validation sample (as iter_eval shards them); both ranks must
    report the one-process table of the whole split and keep its mix."""
    import json
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_calibrate_worker, args=(2, port, str(tmp_path / "r")), nprocs=2, join=True)
    got = [json.loads((tmp_path / f"r.{r}").read_text()) for r in (0, 1)]
    whole = make("fmnist_lt_allnc", "method.gbbn.inference_mix=val", "data.val_per_class=2")
    whole.eval()
    want = whole.calibrate(lambda: iter([(batch(seed=s)["x"], batch(seed=s)["y"]) for s in (11, 12, 13)]))
    for g in got:
        assert g["val_top1_by_alpha"] == want["val_top1_by_alpha"]
        assert g["inference_alpha"] == g["buffer"] == want["inference_alpha"]
    # the shards alone give other tables: the test would fail without the all-reduce
    half = make("fmnist_lt_allnc", "method.gbbn.inference_mix=val", "data.val_per_class=2")
    half.eval()
    alone = half.calibrate(lambda: iter([(batch(seed=s)["x"][0::2], batch(seed=s)["y"][0::2]) for s in (11, 12, 13)]))
    assert alone["val_top1_by_alpha"] != want["val_top1_by_alpha"]


def test_inference_mix_auto_is_val_with_a_validation_split_and_final_without():
    data = [(batch(seed=s)["x"], batch(seed=s)["y"]) for s in (11, 12)]
    with_val = make("fmnist_lt_allnc", "method.gbbn.inference_mix=auto", "data.val_per_class=2")
    as_val = make("fmnist_lt_allnc", "method.gbbn.inference_mix=val", "data.val_per_class=2")
    for m in (with_val, as_val):
        m.eval()
    got, want = with_val.calibrate(lambda: iter(data)), as_val.calibrate(lambda: iter(data))
    assert got is not None and got == want and float(with_val.infer_alpha) == float(as_val.infer_alpha)
    without = make("fmnist_lt_allnc", "method.gbbn.inference_mix=auto")
    assert without.calibrate(lambda: iter(data)) is None
    assert float(without.infer_alpha) == pytest.approx(adaptor_alpha("parabolic", 9, 10))


def test_hycon_centred_is_the_uncentred_loss_of_centred_vectors_and_translation_invariant():
    g = torch.Generator().manual_seed(0)
    f = torch.rand(16, 8, generator=g)  # post-ReLU-like: all positive
    y = torch.randint(0, 4, (16,), generator=g)
    mu = torch.rand(4, 8, generator=g) + 0.5
    c = mu.mean(0)
    loss = HyConLoss(tau=0.1)
    centred = loss(f, y, mu, centre=c)
    assert torch.allclose(centred, loss(f - c, y, mu - c))
    shift = torch.full((8,), 3.0)
    assert torch.allclose(loss(f + shift, y, mu + shift, centre=(mu + shift).mean(0)), centred, atol=1e-5)
    assert not torch.allclose(loss(f + shift, y, mu + shift), loss(f, y, mu), atol=1e-3)  # uncentred: not invariant


def test_hycon_leaves_out_a_class_seen_for_the_first_time_in_the_batch():
    """Its memory row is still zero during the step: centred, it would move the centre and
    become a made-up positive. HyCon must equal the loss over the classes seen before."""
    from allnc.losses import ClassMeanMemory
    from allnc.methods import nc_terms
    from omegaconf import OmegaConf

    g = torch.Generator().manual_seed(0)
    mem = ClassMeanMemory(3, 4)
    mem.update_from_stats(*mem.batch_stats(torch.rand(6, 4, generator=g) + 2, torch.tensor([0, 0, 0, 1, 1, 1]),
                                           grad=False))
    h, y = torch.rand(6, 4, generator=g) + 2, torch.tensor([0, 1, 2, 2, 0, 1])  # class 2: first time
    present = torch.ones(3, dtype=torch.bool)
    hy = HyConLoss(tau=0.1)
    for centre in (True, False):
        cfg = OmegaConf.create({"method": {"hycon": {"centre": centre, "centre_gradient": "none"}}})
        got = nc_terms.hycon_term(hy, cfg, mem, h, y, *mem.mix(*mem.batch_stats(h, y)))
        seen = mem.seen.clone()
        assert seen.tolist() == [True, True, False]
        want = hy(h, y, mem.means, valid=seen, centre=mem.means[seen].mean(0) if centre else None)
        assert torch.allclose(got, want)
    # with the old rule (the zero row counted) the centred loss differs: the test can fail
    assert not torch.allclose(hy(h, y, mem.means, valid=present, centre=mem.means.mean(0)), got.new_tensor(float(
        hy(h, y, mem.means, valid=mem.seen, centre=mem.means[mem.seen].mean(0)))))


def test_hycon_on_both_branches_adds_the_rebalanced_term():
    T, e = 10, 6
    one = make("fmnist_lt_allnc", "method.hycon.anchors=conventional", "method.hycon.centre=false")
    both = make("fmnist_lt_allnc", "method.hycon.anchors=both", "method.hycon.centre=false")
    both.load_state_dict(one.state_dict(), strict=False)
    for m in (one, both):
        m.train()
        m.on_epoch_start(e, T)
        m.training_loss([batch(seed=1), batch(seed=2)], StepState(e, T))  # warm-up
    both.mem_r.load_state_dict(one.mem_r.state_dict())
    mem_r, seen_r = both.mem_r.means.clone(), both.mem_r.seen.clone()
    bu, br = batch(seed=3), batch(seed=4)
    l1, _ = one.training_loss([bu, br], StepState(e, T))
    l2, logs = both.training_loss([bu, br], StepState(e, T))
    a = 1 - (e / T) ** 2
    with torch.no_grad():
        _, h_r = both.net.forward_both(bu["x"], br["x"])
        ref = HyConLoss(tau=0.1)(h_r, br["y"], mem_r, valid=seen_r)
    assert float(logs["loss_hycon_r"]) == pytest.approx(float(ref), rel=1e-5)
    assert float((l2 - l1).detach()) == pytest.approx((1 - a) * float(ref), rel=1e-4)


def test_p2p_equinorm_term():
    K, d = 5, 8
    # a simplex ETF with equal norms: no equinorm penalty, and the term adds nothing
    M = torch.linalg.qr(torch.randn(d, K))[0] @ (torch.eye(K) - 1 / K) * 2.0
    etf = M.T  # K x d, centred, equal norms
    loss = P2PLoss(tau=0.1, equinorm=1.0)
    assert float(loss.equinorm_penalty(etf, etf)) == pytest.approx(0.0, abs=1e-10)
    assert torch.allclose(loss(etf, etf), P2PLoss(tau=0.1)(etf, etf))
    S = F.normalize(etf - etf.mean(0), dim=1) @ F.normalize(etf, dim=1).T
    assert torch.allclose(S, etf_cosines(K), atol=1e-5)
    # worked example: row norms 1, 1, 2, 2, 4 -> mean 2, population variance 1.2, CV^2 0.3
    W = etf / etf.norm(dim=1, keepdim=True) * torch.tensor([1.0, 1, 2, 2, 4])[:, None]
    assert float(loss.equinorm_penalty(etf, W)) == pytest.approx(0.3, rel=1e-5)
    # gradient steps on the penalty bring the norms together
    Wp = W.clone().requires_grad_(True)
    for _ in range(200):
        p = loss.equinorm_penalty(etf, Wp)
        (g,) = torch.autograd.grad(p, Wp)
        Wp = (Wp - 0.5 * g).detach().requires_grad_(True)
    n = Wp.detach().norm(dim=1)
    assert float(n.std() / n.mean()) < 0.1 * float(W.norm(dim=1).std() / W.norm(dim=1).mean())


@pytest.mark.parametrize("normalize,weighted", [(True, True), (False, True), (True, False)])
def test_etf_dot_regression_uses_the_features_the_option_names(normalize, weighted):
    """method.etf.normalize_features: the dot regression of unit features, or of the raw
    (batch-normalised) features, as docs and docstring say; method.etf.batch_class_weight: each
    image weighs B / (C_b n_c) (n_c images of its class among the C_b classes of the batch)."""
    m = make("fmnist_lt_etf_dr", "train.mixup=0", f"method.etf.normalize_features={str(normalize).lower()}",
             f"method.etf.batch_class_weight={str(weighted).lower()}")
    m.train()
    b = batch(seed=5)
    torch.manual_seed(0)
    loss, _ = m.training_loss([b], StepState(0, 10))
    y = b["y"].tolist()
    v = torch.tensor([len(y) / (len(set(y)) * y.count(c)) if weighted else 1.0 for c in y])
    with torch.no_grad():  # still in train mode: the same batch statistics
        raw = m.feature_bn(m.backbone(b["x"]))
        h = F.normalize(raw, dim=1) if normalize else raw
        W = m.classifier.weight
        want = 0.5 * (v * ((W[b["y"]] * h).sum(1) - 1) ** 2).mean()
    assert float(loss.detach()) == pytest.approx(float(want), rel=1e-5)
    assert normalize or not torch.allclose(raw.norm(dim=1), torch.ones(len(raw)), atol=1e-2)


@pytest.mark.parametrize("config", ["fmnist_lt_ldam_drw", "fmnist_lt_bcl", "fmnist_lt_ce"])
def test_posthoc_logits_at_tau_zero_are_the_logits_the_loss_trained(config):
    """Post-hoc logit adjustment subtracts tau log(prior) in the units of the training loss's
    softmax: LDAM's s = 30 multiplies the cosines inside its loss, BCL's lives in its head."""
    from allnc.engine.posthoc import corrected_logits, cosine_logit_scale

    m = make(config)
    m.eval()
    x = batch(seed=7)["x"]
    with torch.no_grad():
        h, z = m.features(x)
    W, b = m.classifier_weight()
    scale = cosine_logit_scale(m)
    got = corrected_logits(h, W.detach(), None if b is None else b.detach(), "logit_adjust", 0.0,
                           torch.zeros(W.shape[0]), scale)
    trained = z * (30.0 if config == "fmnist_lt_ldam_drw" else 1.0)  # LDAMLoss: s * (cos - margin)
    assert torch.allclose(got, trained, atol=1e-4)
    assert scale == (None if config == "fmnist_lt_ce" else 30.0)

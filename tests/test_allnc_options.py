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
            f = torch.cat([a * m.net.branch_c(t), (1 - a) * m.net.branch_r(t)], 1)
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
        present = torch.zeros(len(COUNTS), dtype=torch.bool)
        present[br["y"]] = True
        ref = HyConLoss(tau=0.1)(h_r, br["y"], mem_r, valid=seen_r | present)
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

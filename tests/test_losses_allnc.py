"""Defining properties of AllNC's losses (this project's reconstruction): HyCon, P2P and the
class-mean memory (single process; the two-process checks are in test_memory_dist.py)."""
import math

import pytest
import torch
import torch.nn.functional as F

from allnc.losses import ClassMeanMemory, HyConLoss, P2PLoss, centred_normalized, etf_cosines

D64 = torch.float64


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _simplex_etf(K, d, seed=0):
    """Rows: a K-class simplex ETF in R^d (unit norm, cosines -1/(K-1), zero sum)."""
    U, _ = torch.linalg.qr(torch.randn(d, K, generator=_gen(seed), dtype=D64))
    M = math.sqrt(K / (K - 1)) * (torch.eye(K, dtype=D64) - 1.0 / K)
    return (U @ M).T.contiguous()


def _unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=_gen(seed), dtype=D64), dim=-1)


# =============================================================================== HyCon
def _hycon_reference(z, y, c, valid, tau, sample_pairs, class_average):
    """Literal transcription of the formula in allnc-method.md (loops, float64)."""
    z = F.normalize(z, dim=1)
    c = F.normalize(c, dim=1)
    B, K = z.shape[0], c.shape[0]
    total, n_anchor = 0.0, 0
    for i in range(B):
        cands = []  # (vector, class)
        if sample_pairs:
            cands += [(z[j], int(y[j])) for j in range(B) if j != i]
        cands += [(c[k], k) for k in range(K) if valid[k]]
        pos = [v for v, k in cands if k == int(y[i])]
        if not pos:
            continue
        if class_average:
            den = 0.0
            for k in range(K):
                members = [v for v, kk in cands if kk == k]
                if members:
                    den += sum(math.exp(float(z[i] @ v) / tau) for v in members) / len(members)
        else:
            den = sum(math.exp(float(z[i] @ v) / tau) for v, _ in cands)
        total += -sum(float(z[i] @ p) / tau - math.log(den) for p in pos) / len(pos)
        n_anchor += 1
    return total / n_anchor


@pytest.mark.parametrize("sample_pairs", [True, False])
@pytest.mark.parametrize("class_average", [True, False])
def test_hycon_matches_formula(sample_pairs, class_average):
    y = torch.tensor([0, 0, 0, 0, 1, 1, 2, 3])
    z = torch.randn(8, 6, generator=_gen(1), dtype=D64) * 2.0  # unnormalised on purpose
    c = torch.randn(5, 6, generator=_gen(2), dtype=D64)
    valid = torch.tensor([True, True, True, False, True])  # class 3 not seen yet
    loss = HyConLoss(tau=0.2, sample_pairs=sample_pairs, class_average=class_average)
    got = loss(z, y, c, valid=valid)
    ref = _hycon_reference(z, y, c, valid, 0.2, sample_pairs, class_average)
    assert got.item() == pytest.approx(ref, rel=1e-10)


def test_hycon_without_sample_pairs_is_anchor_to_mean_ce():
    y = torch.tensor([0, 1, 1, 2, 4, 4])
    z = torch.randn(6, 5, generator=_gen(3), dtype=D64)
    c = torch.randn(5, 5, generator=_gen(4), dtype=D64)
    valid = torch.tensor([True, True, True, False, True])
    tau = 0.1
    got = HyConLoss(tau=tau, sample_pairs=False)(z, y, c, valid=valid)
    logits = F.normalize(z, dim=1) @ F.normalize(c, dim=1).T / tau
    logits = logits.masked_fill(~valid, float("-inf"))
    assert torch.allclose(got, F.cross_entropy(logits, y), atol=1e-12)
    # the same with class averaging off: one candidate per class makes averaging moot
    got2 = HyConLoss(tau=tau, sample_pairs=False, class_average=False)(z, y, c, valid=valid)
    assert torch.allclose(got2, got, atol=1e-12)


@pytest.mark.parametrize("sample_pairs", [True, False])
def test_hycon_gradient_pulls_anchor_to_own_mean(sample_pairs):
    K, d = 4, 6
    c = _simplex_etf(K, d, seed=5)
    # anchor of class 0 between its mean and the others; batch samples near their means
    y = torch.tensor([0, 0, 1, 2, 3, 1])
    noise = 0.3 * torch.randn(6, d, generator=_gen(6), dtype=D64)
    z = F.normalize(c[y] + noise, dim=1)
    z[0] = F.normalize(0.5 * c[0] + 0.4 * c[1] + 0.3 * c[2] + 0.2 * c[3] + 0.3 * _unit(d, seed=7), dim=0)
    z = z.clone().requires_grad_(True)
    loss = HyConLoss(tau=0.1, sample_pairs=sample_pairs)(z, y, c)
    (g,) = torch.autograd.grad(loss, z)
    g0 = g[0]
    assert float(g0 @ (c[0] - z[0].detach())) < 0  # descent moves toward its own mean
    for k in range(1, K):
        assert float(g0 @ c[k]) > 0  # and away from every other mean
    # one small descent step on the anchor
    with torch.no_grad():
        z0 = z[0]
        z1 = F.normalize(z0 - 0.01 * g0, dim=0)
        assert float(z1 @ c[0]) > float(z0 @ c[0])
        for k in range(1, K):
            assert float(z1 @ c[k]) < float(z0 @ c[k])


def test_hycon_one_sample_per_class_has_the_mean_as_positive():
    K, d = 5, 8
    y = torch.arange(K)
    z = _unit(K, d, seed=8).requires_grad_(True)
    c = _unit(K, d, seed=9)
    loss = HyConLoss()
    value = loss(z, y, c)
    assert torch.isfinite(value) and value.item() > 1e-3
    assert bool(loss.has_positive(z, y, c).all())
    (g,) = torch.autograd.grad(value, z)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    # without the means (none seen yet) no anchor has a positive and the loss is an inert 0
    none = torch.zeros(K, dtype=torch.bool)
    assert not bool(loss.has_positive(z, y, c, valid=none).any())
    empty = loss(z, y, c, valid=none)
    assert empty.item() == 0.0
    (g0,) = torch.autograd.grad(empty, z)
    assert torch.isfinite(g0).all() and g0.abs().sum() == 0


def test_hycon_zero_norm_mean_is_not_a_candidate():
    y = torch.tensor([0, 1, 1, 2])
    z = _unit(4, 5, seed=10)
    c = _unit(3, 5, seed=11)
    c0 = c.clone()
    c0[2] = 0.0  # an unseen memory row
    mask = torch.tensor([True, True, False])
    assert torch.allclose(HyConLoss()(z, y, c0), HyConLoss()(z, y, c, valid=mask))


def test_hycon_means_are_detached():
    y = torch.tensor([0, 1, 1, 2])
    z = _unit(4, 5, seed=12).requires_grad_(True)
    c = _unit(3, 5, seed=13).requires_grad_(True)
    HyConLoss()(z, y, c).backward()
    assert c.grad is None and z.grad is not None


def test_hycon_class_average_removes_head_pull():
    """A collapsed head class (samples on its mean) fills the batch: with class averaging the
    loss and gradient of a tail anchor do not depend on how many head samples there are;
    the plain denominator gives the head class a share that grows with its count."""
    K, d = 4, 6
    c = _simplex_etf(K, d, seed=14)
    # a tail anchor on the boundary between its class and the head class
    tail = F.normalize(c[2] + c[0] + 0.2 * _unit(d, seed=15), dim=0)
    others = F.normalize(torch.stack([c[1], c[2], c[3]]) + 0.2 * _unit(3, d, seed=16), dim=1)

    def run(m, class_average):
        z = torch.cat([tail[None], others, c[0].expand(m, d)]).clone().requires_grad_(True)
        y = torch.tensor([2, 1, 2, 3] + [0] * m)
        loss = HyConLoss(tau=0.1, class_average=class_average)
        per = loss(z, y, c, reduction="none")
        (g,) = torch.autograd.grad(per[0], z)
        share = loss.denominator_class_shares(z, y, c)[0, 0]
        return per[0].item(), g[0], share.item()

    l1, g1, s1 = run(1, True)
    l30, g30, s30 = run(30, True)
    assert l30 == pytest.approx(l1, rel=1e-12)
    assert torch.allclose(g30, g1, atol=1e-12)
    assert s30 == pytest.approx(s1, rel=1e-12)
    p1, pg1, ps1 = run(1, False)
    p30, pg30, ps30 = run(30, False)
    assert p30 > p1 + 1.0
    assert ps30 > 0.8 and ps30 > 3 * s30 and ps30 > 3 * ps1  # head dominance: plain denominator only
    # in the plain loss the head samples push the tail anchor away from the head far harder
    assert float(pg30 @ c[0]) > 2 * float(pg1 @ c[0]) > 0


# =============================================================================== P2P
def _aligned(K=5, d=6, seed=0):
    M = _simplex_etf(K, d, seed)
    return M.clone(), M.clone()


@pytest.mark.parametrize("form", ["contrast", "regression"])
def test_p2p_regression_zero_and_invariances_at_aligned_etf(form):
    means, W = _aligned()
    loss = P2PLoss(tau=0.1, form=form)
    base = loss(means, W)
    # raw means: any common offset and scale are removed by the class-balanced centring
    offset = torch.randn(6, generator=_gen(17), dtype=D64)
    shifted = loss(3.0 * means + offset, 2.5 * W)
    assert shifted.item() == pytest.approx(base.item(), rel=1e-9, abs=1e-12)
    if form == "regression":
        assert base.item() == pytest.approx(0.0, abs=1e-24)
    S = loss.similarities(means, W)
    assert torch.allclose(S, etf_cosines(5, D64), atol=1e-12)


@pytest.mark.parametrize("form", ["contrast", "regression"])
@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_p2p_lowest_at_aligned_etf(form, tau):
    K, d = 5, 6
    means, W = _aligned(K, d)
    loss = P2PLoss(tau=tau, form=form)
    best = loss(means, W).item()
    g = _gen(18)
    for _ in range(30):  # random configurations
        rm = torch.randn(K, d, generator=g, dtype=D64)
        rw = torch.randn(K, d, generator=g, dtype=D64)
        assert loss(rm, rw).item() > best + 1e-3
    for eps in (1e-2, 5e-2):  # local perturbations of the means, of W, of both
        for _ in range(10):
            pm = eps * torch.randn(K, d, generator=g, dtype=D64)
            pw = eps * torch.randn(K, d, generator=g, dtype=D64)
            for mm, ww in ((means + pm, W), (means, W + pw), (means + pm, W + pw)):
                assert loss(mm, ww).item() > best


@pytest.mark.parametrize("form", ["contrast", "regression"])
def test_p2p_rises_when_minority_pairs_are_squeezed(form):
    K, d = 6, 8
    means, W = _aligned(K, d, seed=19)
    loss = P2PLoss(tau=0.1, form=form)
    base = loss(means, W).item()
    minority = [3, 4, 5]
    values = []
    for spread in (1.0, 0.6, 0.3, 0.1):  # 1.0 = untouched; smaller = narrower cone
        mm, ww = means.clone(), W.clone()
        axis = F.normalize(W[minority].mean(0), dim=0)
        cone = F.normalize(axis + spread * (W[minority] - axis), dim=1)
        mm[minority] = cone
        ww[minority] = cone  # means stay on their classifier vectors: only the spread changes
        values.append(loss(mm, ww).item())
    assert values[0] == pytest.approx(base, abs=1e-12)
    assert all(b > a for a, b in zip(values, values[1:]))
    assert values[-1] > base + (0.05 if form == "regression" else 0.2)


@pytest.mark.parametrize("form", ["contrast", "regression"])
def test_p2p_rises_when_w_rotates_away_from_means(form):
    K, d = 5, 6
    means, W = _aligned(K, d, seed=20)
    loss = P2PLoss(tau=0.1, form=form)
    # a rotation in the plane of two ETF directions
    u = F.normalize(W[0], dim=0)
    v = F.normalize(W[1] - (W[1] @ u) * u, dim=0)
    values = []
    for theta in (0.0, 0.1, 0.3, 0.6, 1.0):
        R = torch.eye(d, dtype=D64) + math.sin(theta) * (torch.outer(v, u) - torch.outer(u, v)) + (
            math.cos(theta) - 1
        ) * (torch.outer(u, u) + torch.outer(v, v))
        assert torch.allclose(R @ R.T, torch.eye(d, dtype=D64), atol=1e-12)
        values.append(loss(means, W @ R.T).item())
    assert all(b > a for a, b in zip(values, values[1:]))


def test_p2p_contrast_finds_etf_by_descent():
    """Gradient descent from a random start reaches the aligned simplex ETF where d >= K-1,
    and the best spread where d < K-1 (6 classes in 3-d: the octahedron, cosines 0 and -1).
    tau = 0.5 here: at tau = 0.1 the loss saturates once pairs are a few tau apart and the
    descent crawls (about 0.83 self-duality after 1000 Adam steps), though the minimum is
    the same."""
    torch.manual_seed(0)
    for K, d in ((4, 5), (6, 3)):
        means = torch.randn(K, d, dtype=D64, requires_grad=True)
        W = torch.randn(K, d, dtype=D64, requires_grad=True)
        loss = P2PLoss(tau=0.5)
        opt = torch.optim.Adam([means, W], lr=0.05)
        start = loss(means, W).item()
        for _ in range(300):
            opt.zero_grad()
            value = loss(means, W)
            value.backward()
            opt.step()
        assert value.item() < start
        with torch.no_grad():
            S = loss.similarities(means, W)
            wn = F.normalize(W, dim=1)
            off = (wn @ wn.T)[~torch.eye(K, dtype=torch.bool)]
            assert float(S.diagonal().min()) > 0.99  # self-duality
            if d >= K - 1:
                assert torch.allclose(off, torch.full_like(off, -1.0 / (K - 1)), atol=0.01)
            else:
                assert float(off.max()) < 0.02 and float(off.min()) < -0.98


def test_p2p_valid_mask_and_gradients():
    K, d = 5, 6
    means, W = _aligned(K, d, seed=21)
    means = (means + 0.1 * torch.randn(K, d, generator=_gen(22), dtype=D64)).requires_grad_(True)
    W = (W + 0.1 * torch.randn(K, d, generator=_gen(23), dtype=D64)).requires_grad_(True)
    valid = torch.tensor([True, True, False, True, True])
    for form in ("contrast", "regression"):
        loss = P2PLoss(form=form)
        value = loss(means, W, valid=valid)
        gm, gw = torch.autograd.grad(value, (means, W))
        assert torch.isfinite(gm).all() and torch.isfinite(gw).all()
        assert gm[2].abs().max() == 0 and gm[valid].abs().sum() > 0  # an invalid mean is unused
        assert gw.abs().sum() > 0
        moved = means.detach().clone()
        moved[2] = 100.0
        assert loss(moved, W, valid=valid).item() == pytest.approx(value.item(), rel=1e-12)
        assert loss(moved, W).item() != pytest.approx(value.item(), rel=1e-3)
    with pytest.raises(ValueError):
        P2PLoss(form="nope")


def test_centred_normalized_uses_class_balanced_centre():
    means = torch.tensor([[4.0, 0.0], [0.0, 2.0], [1.0, 1.0]], dtype=D64)
    out = centred_normalized(means)
    assert torch.allclose(out, F.normalize(means - means.mean(0), dim=1))
    assert torch.allclose(out.norm(dim=1), torch.ones(3, dtype=D64))
    # not the sample-weighted centre: duplicating a class's samples does not matter here
    assert torch.allclose(centred_normalized(means + torch.tensor([5.0, -3.0], dtype=D64)), out)
    valid = torch.tensor([True, True, False])
    sub = centred_normalized(means, valid)
    assert torch.allclose(sub[:2], F.normalize(means[:2] - means[:2].mean(0), dim=1))


# =============================================================================== memory
def _update(mem, f, y):
    return mem.update_from_stats(*mem.batch_stats(f, y, grad=False))


def test_memory_ema_worked_example():
    mem = ClassMeanMemory(3, 2, momentum=0.9)
    f1 = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])
    y1 = torch.tensor([0, 0, 1])
    present = _update(mem, f1, y1)
    assert present.tolist() == [True, True, False]
    # first sight: set to the batch mean; class 2 absent and unseen stays 0
    assert torch.allclose(mem.means, torch.tensor([[2.0, 0.0], [0.0, 2.0], [0.0, 0.0]]))
    assert mem.seen.tolist() == [True, True, False]
    f2 = torch.tensor([[0.0, 10.0], [5.0, 5.0], [7.0, 1.0]])
    y2 = torch.tensor([0, 2, 2])
    _update(mem, f2, y2)
    expected = torch.tensor(
        [
            [0.9 * 2.0 + 0.1 * 0.0, 0.9 * 0.0 + 0.1 * 10.0],  # EMA
            [0.0, 2.0],  # absent: kept
            [6.0, 3.0],  # first sight: the batch mean
        ]
    )
    assert torch.allclose(mem.means, expected)
    assert mem.seen.tolist() == [True, True, True]
    assert mem.means.dtype == torch.float32 and mem.seen.dtype == torch.bool


def test_memory_mixed_means_gradient_only_where_present():
    mem = ClassMeanMemory(4, 3)
    _update(mem, torch.ones(4, 3) * torch.arange(4.0)[:, None], torch.arange(4))
    before = mem.means.clone()
    f = torch.randn(5, 3, generator=_gen(24), requires_grad=True)
    y = torch.tensor([0, 0, 2, 2, 2])
    means, present = mem.mix(*mem.batch_stats(f, y))
    assert present.tolist() == [True, False, True, False]
    assert torch.allclose(means[0], f[:2].mean(0)) and torch.allclose(means[2], f[2:].mean(0))
    assert torch.equal(means[1], before[1]) and torch.equal(means[3], before[3])
    R = torch.randn(4, 3, generator=_gen(25))
    (g,) = torch.autograd.grad((means * R).sum(), f, retain_graph=True)
    expected = torch.stack([R[0] / 2, R[0] / 2, R[2] / 3, R[2] / 3, R[2] / 3])
    assert torch.allclose(g, expected)
    (g_absent,) = torch.autograd.grad(means[[1, 3]].sum(), f, allow_unused=True)
    assert g_absent is None or g_absent.abs().sum() == 0
    assert not mem.means.requires_grad
    # forming the means does not change the memory
    assert torch.equal(mem.means, before)


def test_memory_state_dict_round_trip():
    mem = ClassMeanMemory(5, 4, momentum=0.8)
    _update(mem, torch.randn(6, 4, generator=_gen(26)), torch.tensor([0, 1, 1, 3, 3, 3]))
    sd = mem.state_dict()
    assert set(sd) == {"means", "seen"}
    fresh = ClassMeanMemory(5, 4, momentum=0.8)
    fresh.load_state_dict(sd)
    assert torch.equal(fresh.means, mem.means) and torch.equal(fresh.seen, mem.seen)
    assert fresh.seen.tolist() == [True, True, False, True, False]


@pytest.mark.parametrize("mode", ["none", "batch"])
def test_centred_hycon_pushes_features_along_a_common_direction_only_with_a_constant_centre(mode):
    # shifting every feature by one vector v changes sum_i dL/dh_i . v; with the centre's
    # gradient taken from the batch (centre_gradient=batch) the contrast is translation-invariant
    # and that sum vanishes, while a constant (detached) centre leaves a common push, which on
    # the CIFAR proxy drove the features' mean away until the classification loss spiked
    from allnc.config import load_config
    from allnc.methods.nc_terms import hycon_term, make_hycon

    cfg = load_config("cifar10_lt_allnc", [f"method.hycon.centre_gradient={mode}"])
    g = torch.Generator().manual_seed(0)
    K, d, B = 5, 16, 40
    mem = ClassMeanMemory(K, d)
    mem.means.copy_(torch.randn(K, d, generator=g) + 2.0)  # post-ReLU-like: a shared offset
    mem.seen.fill_(True)
    h = (torch.randn(B, d, generator=g) + 2.5).requires_grad_(True)
    y = torch.arange(B) % K
    loss = hycon_term(make_hycon(cfg), cfg, mem, h, y, *mem.mix(*mem.batch_stats(h, y)))
    (grad,) = torch.autograd.grad(loss, h)
    common = grad.sum(0).norm() / grad.norm()
    if mode == "batch":
        assert common < 1e-5
    else:
        assert common > 0.05
    # the loss itself is the same either way: only its gradient differs
    none = load_config("cifar10_lt_allnc", ["method.hycon.centre_gradient=none"])
    ref = hycon_term(make_hycon(none), none, mem, h.detach(), y, *mem.mix(*mem.batch_stats(h.detach(), y)))
    assert torch.allclose(loss.detach(), ref)

"""Defining properties of the baseline losses: LA / Balanced Softmax CE, LDAM + DRW,
dot regression (fixed ETF) and BCL."""
import math

import pytest
import torch
import torch.nn.functional as F

from allnc.losses import (
    BalancedSupConLoss,
    LDAMLoss,
    balanced_softmax_ce,
    batch_class_weights,
    class_weight,
    class_weighted_ce,
    dot_regression_loss,
    drw_weights,
    ldam_margins,
    log_prior,
    logit_adjusted_ce,
)

COUNTS = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]  # CIFAR-10-LT, IF 100


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- CE family
def test_log_prior_is_log_frequency():
    lp = log_prior([1, 3])
    assert torch.allclose(lp, torch.tensor([math.log(0.25), math.log(0.75)]))
    assert torch.allclose(lp.exp().sum(), torch.tensor(1.0))


def test_la_tau_zero_and_uniform_prior_equal_ce():
    g = _gen()
    logits = torch.randn(16, 10, generator=g)
    y = torch.randint(0, 10, (16,), generator=g)
    ce = F.cross_entropy(logits, y)
    lp = log_prior(COUNTS)
    assert torch.allclose(logit_adjusted_ce(logits, y, lp, tau=0.0), ce, atol=1e-6)
    uniform = log_prior([7] * 10)
    assert torch.allclose(logit_adjusted_ce(logits, y, uniform, tau=1.0), ce, atol=1e-6)
    assert torch.allclose(logit_adjusted_ce(logits, y, uniform, tau=2.5), ce, atol=1e-6)
    # a non-uniform prior does change it
    assert not torch.allclose(logit_adjusted_ce(logits, y, lp, tau=1.0), ce, atol=1e-3)


def test_la_weight_is_weighted_ce_of_adjusted_logits():
    g = _gen(1)
    logits = torch.randn(8, 4, generator=g)
    y = torch.tensor([0, 1, 2, 3, 0, 0, 1, 3])
    lp = log_prior([40, 20, 10, 5])
    w = torch.tensor([0.5, 1.0, 1.5, 2.0])
    got = logit_adjusted_ce(logits, y, lp, tau=0.7, weight=w)
    adj = logits + 0.7 * lp
    per = -F.log_softmax(adj, 1)[torch.arange(8), y]
    assert torch.allclose(got, (w[y] * per).sum() / w[y].sum(), atol=1e-6)


def test_balanced_softmax_gradient_worked_example():
    # one sample, 3 classes, counts 6 / 3 / 1, logits (1, 0, -1), label 2 (the tail class)
    counts = torch.tensor([6.0, 3.0, 1.0])
    z = torch.tensor([[1.0, 0.0, -1.0]], requires_grad=True)
    loss = balanced_softmax_ce(z, torch.tensor([2]), log_prior(counts))
    loss.backward()
    # hand formula: dL/dz_j = n_j e^{z_j} / sum_k n_k e^{z_k} - [j = y]
    e = torch.tensor([6 * math.e, 3.0, 1 / math.e])
    expected = e / e.sum() - torch.tensor([0.0, 0.0, 1.0])
    assert torch.allclose(z.grad[0], expected, atol=1e-6)
    # and the value: -log(n_y e^{z_y} / sum_k n_k e^{z_k})
    assert math.isclose(loss.item(), -math.log(float(e[2] / e.sum())), rel_tol=1e-6)


def test_class_weighted_ce():
    w = class_weight([100, 10, 1])
    assert torch.allclose(w.sum(), torch.tensor(3.0))
    assert torch.allclose(w / w[0], torch.tensor([1.0, 10.0, 100.0]), rtol=1e-5)
    logits = torch.randn(6, 3, generator=_gen(2))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    assert torch.allclose(class_weighted_ce(logits, y, [100, 10, 1], power=0.0), F.cross_entropy(logits, y))


# ----------------------------------------------------------------------------- LDAM-DRW
def test_ldam_margins_proportional_to_quarter_power():
    m = ldam_margins(COUNTS, max_margin=0.5)
    n = torch.tensor(COUNTS, dtype=torch.float64)
    ratio = m.double() * n.pow(0.25)
    assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-5)  # m_k n_k^{1/4} = C
    assert math.isclose(m.max().item(), 0.5, rel_tol=1e-6)
    assert int(m.argmax()) == len(COUNTS) - 1  # the rarest class has the largest margin
    loss = LDAMLoss(COUNTS, max_margin=0.3)
    assert "margins" in dict(loss.named_buffers())
    assert math.isclose(loss.margins.max().item(), 0.3, rel_tol=1e-6)


def test_drw_weights_effective_number():
    beta = 0.999
    w = drw_weights(COUNTS, beta=beta)
    n = torch.tensor(COUNTS, dtype=torch.float64)
    raw = (1 - beta) / (1 - beta**n)
    assert torch.allclose(w.double(), raw / raw.sum() * len(COUNTS), rtol=1e-5)
    assert math.isclose(w.sum().item(), len(COUNTS), rel_tol=1e-5)
    assert bool((w[1:] > w[:-1]).all())  # rarer classes weigh more


def test_ldam_zero_margin_is_scaled_ce_and_margin_hits_target_only():
    g = _gen(3)
    cos = torch.rand(12, 10, generator=g) * 2 - 1
    y = torch.randint(0, 10, (12,), generator=g)
    flat = LDAMLoss(COUNTS, max_margin=0.0, scale=30.0)
    assert torch.allclose(flat(cos, y), F.cross_entropy(30.0 * cos, y), atol=1e-5)
    ldam = LDAMLoss(COUNTS, max_margin=0.5, scale=30.0)
    m = ldam.margins
    shifted = cos.clone()
    shifted[torch.arange(12), y] -= m[y]
    assert torch.allclose(ldam(cos, y), F.cross_entropy(30.0 * shifted, y), atol=1e-5)
    assert ldam(cos, y) > flat(cos, y)
    w = drw_weights(COUNTS)
    assert torch.allclose(ldam(cos, y, weight=w), F.cross_entropy(30.0 * shifted, y, weight=w), atol=1e-5)
    ldam.set_weight(w)
    assert torch.allclose(ldam(cos, y), F.cross_entropy(30.0 * shifted, y, weight=w), atol=1e-5)
    assert "weight" not in ldam.state_dict()  # DRW weight follows the epoch, not the checkpoint


# ----------------------------------------------------------------------------- dot regression
def _simplex_etf(K, d, seed=0):
    """Rows: a K-class simplex ETF in R^d (unit norm, cosines -1/(K-1))."""
    g = _gen(seed)
    U, _ = torch.linalg.qr(torch.randn(d, K, generator=g, dtype=torch.float64))
    M = math.sqrt(K / (K - 1)) * (torch.eye(K, dtype=torch.float64) - 1.0 / K)
    return (U @ M).T.contiguous()  # K x d


def test_dot_regression_zero_at_alignment_positive_otherwise():
    W = _simplex_etf(5, 8).float()
    y = torch.tensor([0, 1, 2, 3, 4, 2])
    h = 3.7 * W[y]  # any positive scale: features are normalised
    assert dot_regression_loss(h, y, W).item() == pytest.approx(0.0, abs=1e-10)
    h2 = h + 0.3 * torch.randn(h.shape, generator=_gen(4))
    assert dot_regression_loss(h2, y, W).item() > 1e-4
    # a wrong class direction: w_k.w_y = -1/4, loss = 1/2 (1 + 1/4)^2
    wrong = W[(y + 1) % 5]
    assert dot_regression_loss(wrong, y, W).item() == pytest.approx(0.5 * 1.25**2, rel=1e-5)


def test_batch_class_weights_give_every_present_class_an_equal_share():
    y = torch.tensor([0, 0, 0, 3, 1, 3])  # B 6; classes 0, 1, 3 present (3, 1, 2 images)
    w = batch_class_weights(y, num_classes=5)
    assert w.tolist() == pytest.approx([6 / 9, 6 / 9, 6 / 9, 1.0, 2.0, 1.0])  # B / (C_b n_c)
    for c in (0, 1, 3):
        assert float(w[y == c].sum()) == pytest.approx(6 / 3)
    assert batch_class_weights(torch.tensor([2, 4, 1]), 5).tolist() == [1.0, 1.0, 1.0]  # one image each: plain


def test_weighted_dot_regression_is_the_authors_scaled_target():
    # their code scales class c's ETF target by e_c = sqrt(B / (C_b n_c)) and regresses
    # (e_c m_c . h - e_c ||h||)^2 / 2 with unit h: the same as weighing the squared error by e_c^2
    W = _simplex_etf(4, 6).float()
    y = torch.tensor([0, 0, 0, 1, 2, 2, 0])
    h = F.normalize(torch.randn(7, 6, generator=_gen(6)), dim=1)
    e = torch.sqrt(batch_class_weights(y, 4))
    theirs = 0.5 * ((e * (W[y] * h).sum(1) - e * 1.0) ** 2).mean()
    assert dot_regression_loss(h, y, W, weight=batch_class_weights(y, 4)).item() == pytest.approx(theirs.item(), rel=1e-6)
    assert dot_regression_loss(h, y, W).item() != pytest.approx(theirs.item(), rel=1e-3)


def test_dot_regression_gradient_to_features_only():
    W = _simplex_etf(4, 6).float().requires_grad_(True)
    h = torch.randn(7, 6, generator=_gen(5), requires_grad=True)
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2])
    dot_regression_loss(h, y, W).backward()
    assert h.grad is not None and h.grad.abs().sum() > 0
    assert W.grad is None
    # gradient descent on the features raises the target cosine
    with torch.no_grad():
        before = (F.normalize(h, dim=1) * W[y]).sum(1)
        after = (F.normalize(h - 0.1 * h.grad, dim=1) * W[y]).sum(1)
    assert bool((after > before).all())


# ----------------------------------------------------------------------------- BCL
def _bcl_inputs(K, per_class, p, seed):
    g = _gen(seed)
    y = torch.arange(K).repeat_interleave(per_class)
    feats = F.normalize(torch.randn(2 * y.numel(), p, generator=g, dtype=torch.float64), dim=1)
    protos = F.normalize(torch.randn(K, p, generator=g, dtype=torch.float64), dim=1)
    return feats, y, protos


def test_bcl_equal_counts_exact_relation_to_plain_supcon():
    """With n samples of every class in the batch, each class has 2n+1 members in the contrast
    set (2n views + 1 prototype); the anchor's own class has 2n once the anchor is excluded.
    So D_avg = S_y/(2n) + S_rest/(2n+1) = D_plain/(2n+1) * (1 + q/(2n)), q = S_y/D_plain, and

        l_avg = l_plain - log(2n+1) + log(1 + q/(2n))     (exactly, per anchor),

    hence log(2n) <= l_plain - l_avg <= log(2n+1): the additive constant log(count) up to the
    one-member correction of the anchor's own class."""
    K, n, tau = 4, 3, 0.2
    feats, y, protos = _bcl_inputs(K, n, 16, seed=6)
    avg = BalancedSupConLoss(K, tau=tau)(feats, y, protos, reduction="none")
    plain = BalancedSupConLoss(K, tau=tau, class_average=False)(feats, y, protos, reduction="none")
    # q from an explicit loop
    y2 = torch.cat([y, y])
    cand = torch.cat([feats, protos])
    cl = torch.cat([y2, torch.arange(K)])
    q = torch.empty(2 * y.numel(), dtype=torch.float64)
    for i in range(q.numel()):
        e = torch.exp(cand @ feats[i] / tau)
        e[i] = 0.0
        q[i] = e[cl == y2[i]].sum() / e.sum()
    expected = plain - math.log(2 * n + 1) + torch.log1p(q / (2 * n))
    assert torch.allclose(avg, expected, atol=1e-10)
    diff = plain - avg
    assert bool((diff >= math.log(2 * n) - 1e-12).all()) and bool((diff <= math.log(2 * n + 1) + 1e-12).all())
    mean_avg = BalancedSupConLoss(K, tau=tau)(feats, y, protos)
    assert torch.allclose(mean_avg, expected.mean(), atol=1e-10)
    # labels for both views may be passed too
    assert torch.allclose(BalancedSupConLoss(K, tau=tau)(feats, y2, protos), mean_avg)


def test_bcl_matches_explicit_formula():
    K, tau = 3, 0.1
    g = _gen(7)
    y = torch.tensor([0, 0, 0, 1, 2])
    feats = F.normalize(torch.randn(10, 5, generator=g, dtype=torch.float64), dim=1)
    protos = F.normalize(torch.randn(K, 5, generator=g, dtype=torch.float64), dim=1)
    got = BalancedSupConLoss(K, tau=tau)(feats, y, protos)
    y2 = torch.cat([y, y])
    cand = torch.cat([feats, protos])
    cl = torch.cat([y2, torch.arange(K)])
    total = 0.0
    for i in range(10):
        s = (cand @ feats[i] / tau).tolist()
        others = [a for a in range(len(cl)) if a != i]
        den = 0.0
        for k in range(K):
            members = [a for a in others if cl[a] == k]
            den += sum(math.exp(s[a]) for a in members) / len(members)
        pos = [a for a in others if cl[a] == y2[i]]
        total += -sum(s[p] - math.log(den) for p in pos) / len(pos)
    assert got.item() == pytest.approx(total / 10, rel=1e-10)


def test_bcl_class_average_removes_head_dominance():
    K, head = 4, 28
    y = torch.tensor([0] * head + [1, 2, 3])
    B = y.numel()
    # all features and prototypes orthonormal: every similarity is 0, every exp term is 1
    basis = torch.eye(2 * B + K, dtype=torch.float64)
    feats, protos = basis[: 2 * B], basis[2 * B :]
    plain = BalancedSupConLoss(K, class_average=False)
    avg = BalancedSupConLoss(K)
    tail = y.numel() - 1  # an anchor of class 3 (view 1)
    sp = plain.denominator_class_shares(feats, y, protos)[tail]
    sa = avg.denominator_class_shares(feats, y, protos)[tail]
    n_head = 2 * head + 1
    assert sp[0].item() == pytest.approx(n_head / (2 * B + K - 1))
    assert sp[0].item() > 0.85  # the head class dominates the plain denominator
    assert torch.allclose(sa, torch.full((K,), 1.0 / K, dtype=torch.float64))  # one K-th each
    # the losses read off the same denominators: log(2B+K-1) and log K
    lp = plain(feats, y, protos, reduction="none")
    la = avg(feats, y, protos, reduction="none")
    assert torch.allclose(lp, torch.full_like(lp, math.log(2 * B + K - 1)))
    assert torch.allclose(la, torch.full_like(la, math.log(K)))


def test_bcl_random_features_head_share():
    # with random features, the class-averaged head share stays near 1/K and far below plain
    K, head = 4, 40
    g = _gen(8)
    y = torch.tensor([0] * head + [1, 2, 3])
    B = y.numel()
    feats = F.normalize(torch.randn(2 * B, 32, generator=g, dtype=torch.float64), dim=1)
    protos = F.normalize(torch.randn(K, 32, generator=g, dtype=torch.float64), dim=1)
    tail_rows = (torch.cat([y, y]) != 0)
    sp = BalancedSupConLoss(K, tau=0.5, class_average=False).denominator_class_shares(feats, y, protos)
    sa = BalancedSupConLoss(K, tau=0.5).denominator_class_shares(feats, y, protos)
    assert sp[tail_rows, 0].min() > 0.8
    assert sa[tail_rows, 0].max() < 0.45
    assert torch.allclose(sa.sum(1), torch.ones(2 * B, dtype=torch.float64))


def test_bcl_gradient_reaches_prototypes():
    feats, y, protos = _bcl_inputs(3, 2, 8, seed=9)
    protos = protos.clone().requires_grad_(True)
    feats = feats.clone().requires_grad_(True)
    BalancedSupConLoss(3)(feats, y, protos).backward()
    assert protos.grad.abs().sum() > 0 and feats.grad.abs().sum() > 0
    assert torch.isfinite(protos.grad).all()

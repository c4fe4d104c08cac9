"""Neural-collapse metrics: oracles (simplex ETF), hand-computed values, minority collapse,
streaming invariance, float32 robustness and data-parallel reduction."""
from __future__ import annotations

import json
import math
import socket
import warnings

import numpy as np
import pytest
import torch

from allnc.metrics import (
    ClassStatsAccumulator,
    NCMAccumulator,
    compute_nc,
    cosine_matrices,
    nc1,
    nc_summary,
)


# ----------------------------------------------------------------------------- helpers
def simplex_etf(K: int, d: int, seed: int = 0) -> np.ndarray:
    """K x d rows forming a simplex ETF of unit norm (Gram = K/(K-1) (I - 11^T/K)), d >= K-1."""
    rng = np.random.default_rng(seed)
    P = np.eye(K) - 1.0 / K
    B = np.linalg.svd(P)[0][:, :K - 1]  # orthonormal basis of the complement of 1
    Q = np.linalg.qr(rng.standard_normal((d, K - 1)))[0].T  # (K-1) x d, orthonormal rows
    return math.sqrt(K / (K - 1)) * P @ B @ Q


def stats_of(h, y, K, class_counts=True, train_counts=None, batch=None, order=None):
    h = torch.as_tensor(h)
    y = torch.as_tensor(y)
    cc = np.bincount(np.asarray(y), minlength=K) if class_counts else None
    acc = ClassStatsAccumulator(K, h.shape[1], class_counts=cc, train_counts=train_counts)
    idx = torch.arange(len(y)) if order is None else torch.as_tensor(order)
    step = len(y) if batch is None else batch
    for s in range(0, len(y), step):
        j = idx[s:s + step]
        acc.update(h[j], y[j])
    acc.all_reduce()
    return acc.result()


def ncm_of(stats, W, b, h, y):
    n = NCMAccumulator(stats, W, b)
    n.update(torch.as_tensor(h), torch.as_tensor(y))
    n.all_reduce()
    return n


def leaves(d, prefix=""):
    """Flatten nested dicts/lists of numbers into {path: value}."""
    out = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(leaves(v, f"{prefix}/{k}"))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            out.update(leaves(v, f"{prefix}[{i}]"))
    else:
        out[prefix] = d
    return out


def assert_nc_close(a, b, rtol=1e-9, atol=1e-9):
    la, lb = leaves(a), leaves(b)
    assert la.keys() == lb.keys()
    for k in la:
        x, y = la[k], lb[k]
        if isinstance(x, (int, float)) and not isinstance(x, bool) and y is not None:
            assert x == pytest.approx(y, rel=rtol, abs=atol), k
        else:
            assert x == y, k


# ------------------------------------------------------------------ simplex ETF oracle
@pytest.mark.parametrize("imbalanced", [False, True])
def test_simplex_etf_oracle(imbalanced):
    K, d = 6, 10
    M = simplex_etf(K, d) * 3.0
    offset = np.full(d, 5.0)  # a common offset: mu_G != 0
    n_per = [40, 40, 40, 40, 40, 40] if not imbalanced else [300, 150, 60, 30, 10, 4]
    y = np.repeat(np.arange(K), n_per)
    h = M[y] + offset  # features exactly at their class means
    W = M.copy()
    b = -W @ offset
    train_counts = n_per
    st = stats_of(h, y, K, train_counts=train_counts, batch=37)
    r = compute_nc(st, W, b, train_counts, ncm=ncm_of(st, W, b, h, y))
    etf_cos = -1.0 / (K - 1)
    variants = ["class_balanced"] if imbalanced else ["class_balanced", "sample_weighted"]
    for v in variants:
        s = r[v]
        assert abs(s["nc1"]) < 1e-10
        assert s["nc2_equinorm_means"] < 1e-10
        assert s["nc2_equiangular_means"] < 1e-10
        assert s["nc2_maxangle_means"] < 1e-10
        assert s["nc2_gram_means"] < 1e-10
        assert s["mean_cos_means"] == pytest.approx(etf_cos, abs=1e-12)
        assert s["nc3"] < 1e-12
    c = r["classifier"]
    assert c["nc2_equinorm_w"] < 1e-12 and c["nc2_equiangular_w"] < 1e-12
    assert c["nc2_maxangle_w"] < 1e-12 and c["nc2_gram_w"] < 1e-12
    assert c["mean_cos_w"] == pytest.approx(etf_cos, abs=1e-12)
    assert r["nc4"]["nc4"] == 0.0
    assert r["nc4"]["classifier_acc"] == 100.0 and r["nc4"]["ncm_acc"] == 100.0
    assert all(v == pytest.approx(1.0, abs=1e-12) for v in r["per_class"]["self_duality_cos"])
    mats = cosine_matrices(st, W)
    off = ~np.eye(K, dtype=bool)
    for k in ("means_cos", "w_cos", "cross_cos"):
        assert np.allclose(mats[k][off], etf_cos, atol=1e-12)
        assert np.allclose(np.diag(mats[k]), 1.0, atol=1e-12)
    if imbalanced:
        # the sample-weighted global mean is pulled to the head: no longer an ETF around it
        assert r["sample_weighted"]["nc3"] > 1e-2
        assert r["sample_weighted"]["nc2_equinorm_means"] > 1e-2


def test_simplex_etf_d_equals_k_minus_1():
    # the tightest case: d = K - 1, the centred means span the whole space
    K, d = 5, 4
    M = simplex_etf(K, d)
    y = np.repeat(np.arange(K), 3)
    rng = np.random.default_rng(1)
    h = M[y] + 1e-3 * rng.standard_normal((len(y), d))
    st = stats_of(h, y, K)
    r = compute_nc(st, M, None, [3] * K)
    assert 0 < r["class_balanced"]["nc1"] < 1e-4
    assert r["classifier"]["nc2_gram_w"] < 1e-12


# ------------------------------------------------------------------ hand-computed example
H_POINTS = [  # K = 3 classes, d = 3, a handful of points (not in a plane)
    (0, (2.0, 0.5, 0.0)), (0, (3.0, -0.5, 0.5)), (0, (2.5, 0.0, -0.5)), (0, (2.0, 1.0, 0.0)),
    (1, (-1.0, 2.0, 0.3)), (1, (-1.5, 2.5, -0.3)),
    (2, (-0.5, -2.0, 1.0)), (2, (-1.0, -1.5, 0.0)), (2, (0.0, -2.5, 0.5)),
]
H_W = [[1.0, 0.2, 0.0], [-0.4, 1.1, 0.1], [-0.2, -0.9, 0.3]]
H_B = [0.1, -0.3, 3.2]  # a large bias on class 2: two class-0 points go to class 2
H_TRAIN = [150, 30, 5]  # many / medium / few: one class each


def _vec_sub(a, b):
    return [x - y for x, y in zip(a, b)]


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def _norm(a):
    return math.sqrt(_dot(a, a))


def _cos(a, b):
    return _dot(a, b) / (_norm(a) * _norm(b))


def _pstd(v):
    m = sum(v) / len(v)
    return math.sqrt(sum((x - m) ** 2 for x in v) / len(v))


def _hand_expected():
    K, d = 3, 3
    by = {c: [p for cc, p in H_POINTS if cc == c] for c in range(K)}
    n = {c: len(by[c]) for c in range(K)}
    N = len(H_POINTS)
    mu = {c: [sum(p[j] for p in by[c]) / n[c] for j in range(d)] for c in range(K)}
    mu_g = {"sample_weighted": [sum(p[j] for _, p in H_POINTS) / N for j in range(d)],
            "class_balanced": [sum(mu[c][j] for c in range(K)) / K for j in range(d)]}
    out = {}
    for v in ("sample_weighted", "class_balanced"):
        sw = np.zeros((d, d))
        for c in range(K):
            for p in by[c]:
                e = _vec_sub(p, mu[c])
                for i in range(d):
                    for j in range(d):
                        sw[i, j] += e[i] * e[j] * (1.0 / N if v == "sample_weighted" else 1.0 / (K * n[c]))
        cm = {c: _vec_sub(mu[c], mu_g[v]) for c in range(K)}
        sb = np.zeros((d, d))
        for c in range(K):
            for i in range(d):
                for j in range(d):
                    sb[i, j] += cm[c][i] * cm[c][j] / K
        nc1_v = float(np.trace(sw @ np.linalg.pinv(sb, rcond=1e-10))) / K
        norms = [_norm(cm[c]) for c in range(K)]
        coss = [_cos(cm[a], cm[b]) for a in range(K) for b in range(K) if a != b]
        gram = [[_dot(cm[a], cm[b]) for b in range(K)] for a in range(K)]
        gf = math.sqrt(sum(x * x for row in gram for x in row))
        gram_d = math.sqrt(sum((gram[a][b] / gf - ((1 if a == b else 0) - 1 / K) / math.sqrt(K - 1)) ** 2
                               for a in range(K) for b in range(K)))
        wf = math.sqrt(sum(x * x for row in H_W for x in row))
        mf = math.sqrt(sum(x * x for c in range(K) for x in cm[c]))
        nc3 = sum((H_W[c][j] / wf - cm[c][j] / mf) ** 2 for c in range(K) for j in range(d))
        out[v] = {"nc1": nc1_v, "nc2_equinorm_means": _pstd(norms) / (sum(norms) / K),
                  "nc2_equiangular_means": _pstd(coss),
                  "nc2_maxangle_means": sum(abs(x + 1 / (K - 1)) for x in coss) / len(coss),
                  "nc2_gram_means": gram_d, "nc3": nc3, "mean_cos_means": sum(coss) / len(coss),
                  "tr_sigma_w": float(np.trace(sw)), "tr_sigma_b": float(np.trace(sb))}
        out[v + "_cm"] = cm
    # NC4: classifier argmax vs nearest class mean, sample by sample
    dis = clf = ncm = 0
    for c, p in H_POINTS:
        logits = [_dot(H_W[k], p) + H_B[k] for k in range(K)]
        pc = max(range(K), key=lambda k: logits[k])
        pn = min(range(K), key=lambda k: _norm(_vec_sub(p, mu[k])))
        dis += pc != pn
        clf += pc == c
        ncm += pn == c
    out["nc4"] = {"nc4": dis / N, "classifier_acc": 100 * clf / N, "ncm_acc": 100 * ncm / N}
    cm = out["class_balanced_cm"]
    out["self_duality"] = [_cos(H_W[c], cm[c]) for c in range(K)]
    out["w_norm"] = [_norm(H_W[c]) for c in range(K)]
    out["means_norm"] = [_norm(cm[c]) for c in range(K)]
    wn = [_norm(w) for w in H_W]
    wcos = [_cos(H_W[a], H_W[b]) for a in range(K) for b in range(K) if a != b]
    out["classifier"] = {"nc2_equinorm_w": _pstd(wn) / (sum(wn) / K), "nc2_equiangular_w": _pstd(wcos),
                         "nc2_maxangle_w": sum(abs(x + 0.5) for x in wcos) / len(wcos)}
    return out


def test_hand_computed_example():
    K = 3
    y = np.array([c for c, _ in H_POINTS])
    h = np.array([p for _, p in H_POINTS])
    exp = _hand_expected()
    # a sanity check that the example is not degenerate: Sigma_B is singular (rank 2 in 3-d)
    st = stats_of(h, y, K, train_counts=H_TRAIN, batch=2)
    r = compute_nc(st, np.array(H_W), np.array(H_B), H_TRAIN, ncm=ncm_of(st, np.array(H_W), np.array(H_B), h, y))
    for v in ("sample_weighted", "class_balanced"):
        for k, val in exp[v].items():
            assert r[v][k] == pytest.approx(val, rel=1e-10, abs=1e-12), (v, k)
    assert exp["sample_weighted"]["nc1"] != pytest.approx(exp["class_balanced"]["nc1"], rel=1e-3)
    for k, val in exp["classifier"].items():
        assert r["classifier"][k] == pytest.approx(val, rel=1e-10), k
    for k, val in exp["nc4"].items():
        assert r["nc4"][k] == pytest.approx(val), k
    assert exp["nc4"]["nc4"] == pytest.approx(2 / 9)  # the example has some disagreement
    assert r["per_class"]["self_duality_cos"] == pytest.approx(exp["self_duality"], rel=1e-10)
    assert r["per_class"]["w_norm"] == pytest.approx(exp["w_norm"], rel=1e-12)
    assert r["per_class"]["means_norm"] == pytest.approx(exp["means_norm"], rel=1e-10)
    # groups: one class each -> pairwise figures are None, cross / ratios are single pairs
    g = r["groups"]
    for name in ("many", "medium", "few"):
        assert g[name]["num_classes"] == 1
        assert g[name]["w_cos_mean"] is None and g[name]["means_cos_mean"] is None
        assert g[name]["nc1"] is None
    cm = exp["class_balanced_cm"]
    assert g["cross"]["many-few"]["w_cos_mean"] == pytest.approx(_cos(H_W[0], H_W[2]), rel=1e-12)
    assert g["cross"]["many-few"]["means_cos_mean"] == pytest.approx(_cos(cm[0], cm[2]), rel=1e-10)
    assert g["norm_ratios"]["w_many_over_few"] == pytest.approx(_norm(H_W[0]) / _norm(H_W[2]), rel=1e-12)
    assert g["norm_ratios"]["means_many_over_few"] == pytest.approx(_norm(cm[0]) / _norm(cm[2]), rel=1e-10)
    json.dumps(r, allow_nan=False)  # JSON-ready


def test_nc1_pure_function_matches_pinv_of_sigma_b():
    rng = np.random.default_rng(3)
    K, d = 7, 12
    mu = rng.standard_normal((K, d))
    cm = mu - mu.mean(0)
    A = rng.standard_normal((d, d))
    sw = A @ A.T / d
    sb = cm.T @ cm / K  # rank K - 1 = 6 < d
    expected = np.trace(sw @ np.linalg.pinv(sb, rcond=1e-10)) / K
    assert nc1(sw, cm) == pytest.approx(expected, rel=1e-9)
    # K > d: Sigma_B full rank, pinv = inverse
    K, d = 9, 4
    mu = rng.standard_normal((K, d))
    cm = mu - mu.mean(0)
    sb = cm.T @ cm / K
    sw = np.eye(d) * 0.3
    assert nc1(sw, cm) == pytest.approx(np.trace(sw @ np.linalg.inv(sb)) / K, rel=1e-9)


# ------------------------------------------------------------------ minority collapse
def test_minority_collapse_is_detected():
    rng = np.random.default_rng(0)
    K, d = 10, 24
    train_counts = [500] * 5 + [10] * 5  # classes 5..9 are the few group
    mu = np.zeros((K, d))
    for c in range(5):
        mu[c, c] = 5.0  # majority: orthogonal directions
    v = np.zeros(d)
    v[5] = v[6] = 1 / math.sqrt(2)
    for c in range(5, 10):  # minority: squeezed into a narrow cone around v
        u = v + 0.03 * rng.standard_normal(d)
        mu[c] = 5.0 * u / np.linalg.norm(u)
    y = np.repeat(np.arange(K), train_counts)
    h = mu[y] + 0.3 * rng.standard_normal((len(y), d)) + 2.0
    st = stats_of(h, y, K, train_counts=train_counts, batch=512)
    W = mu - mu.mean(0)  # a classifier that collapsed the same way
    r = compute_nc(st, W, None, train_counts)
    g = r["groups"]
    assert g["medium"]["num_classes"] == 0 and g["medium"]["w_cos_mean"] is None
    assert g["few"]["w_cos_mean"] > 0.9 and g["few"]["means_cos_mean"] > 0.9
    assert g["many"]["w_cos_mean"] < 0.2 and g["many"]["means_cos_mean"] < 0.2
    assert g["few"]["w_cos_mean"] - g["many"]["w_cos_mean"] > 0.7
    assert g["cross"]["many-few"]["means_cos_mean"] < 0
    # NC1 inside the few group is large: its classes are barely separable among themselves
    assert g["few"]["nc1_class_balanced"] > 10 * g["many"]["nc1_class_balanced"]
    assert g["norm_ratios"]["w_many_over_few"] is not None
    s = nc_summary(r)
    assert s["few_w_cos"] == g["few"]["w_cos_mean"] and s["many_means_cos"] == g["many"]["means_cos_mean"]


# ------------------------------------------------------------------ streaming
def _random_split(seed=0, N=3000, d=16, K=7):
    rng = np.random.default_rng(seed)
    mu = rng.standard_normal((K, d)) * 2 + 4.0
    p = np.linspace(1, 8, K)
    y = rng.choice(K, size=N, p=p / p.sum())
    h = mu[y] + rng.standard_normal((N, d)) * np.linspace(0.2, 1.0, d)
    W = rng.standard_normal((K, d))
    b = rng.standard_normal(K)
    return h, y, W, b


def test_streaming_equals_one_shot_and_is_order_invariant():
    h, y, W, b = _random_split()
    K, d = W.shape
    train_counts = [400, 300, 150, 90, 50, 15, 8]
    ref = None
    rng = np.random.default_rng(5)
    for batch, order in [(None, None), (7, None), (64, None), (333, rng.permutation(len(y))),
                         (97, rng.permutation(len(y)))]:
        st = stats_of(h, y, K, train_counts=train_counts, batch=batch, order=order)
        r = compute_nc(st, W, b, train_counts, ncm=ncm_of(st, W, b, h, y))
        if ref is None:
            ref = (st, r)
            continue
        assert np.array_equal(st.counts, ref[0].counts)
        assert torch.allclose(st.means, ref[0].means, rtol=1e-12, atol=1e-12)
        assert torch.allclose(st.within, ref[0].within, rtol=1e-10, atol=1e-9)
        assert torch.allclose(st.within_cb, ref[0].within_cb, rtol=1e-10, atol=1e-11)
        assert_nc_close(r, ref[1], rtol=1e-8, atol=1e-10)
    # and the pass-1 statistics equal a direct two-pass float64 computation
    st = ref[0]
    sw_direct = np.zeros((d, d))
    swcb_direct = np.zeros((d, d))
    for c in range(K):
        hc = h[y == c]
        e = hc - hc.mean(0)
        sw_direct += e.T @ e
        swcb_direct += e.T @ e / len(hc)
    assert np.allclose(st.sigma_w().numpy(), sw_direct / len(y), rtol=1e-10, atol=1e-12)
    assert np.allclose(st.sigma_w(True).numpy(), swcb_direct / K, rtol=1e-10, atol=1e-12)


def test_halves_in_either_order_and_a_moved_shift_equal_one_pass():
    """The moments do not depend on the shift: halves fed in either order (different
    first-batch shifts), or a shift moved mid-stream as all_reduce() does to agree across
    ranks, give the statistics of one pass over all the data."""
    h, y, W, b = _random_split(seed=1)
    K, d = W.shape
    tc = [400, 300, 150, 90, 50, 15, 8]
    cc = np.bincount(y, minlength=K)
    whole = stats_of(h, y, K, train_counts=tc)
    halves = [(h[:1000], y[:1000]), (h[1000:] + 0.0, y[1000:])]
    for order, moved in [((0, 1), False), ((1, 0), False), ((0, 1), True)]:
        acc = ClassStatsAccumulator(K, d, class_counts=cc, train_counts=tc)
        for i in order:
            acc.update(torch.as_tensor(halves[i][0]), torch.as_tensor(halves[i][1]))
            if moved and i == order[0]:
                acc._recentre(torch.as_tensor(h[1000:].mean(0) + 3.0))  # far from the first shift
        acc.all_reduce()
        st = acc.result()
        assert np.array_equal(st.counts, whole.counts)
        assert torch.allclose(st.within, whole.within, rtol=1e-10, atol=1e-9)
        assert torch.allclose(st.within_cb, whole.within_cb, rtol=1e-10, atol=1e-11)
        assert torch.allclose(st.means, whole.means, rtol=1e-12, atol=1e-12)
    assert not hasattr(ClassStatsAccumulator, "merge")


def _ddp_worker(rank, world, port, path, h, y, tc):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        K, d = 7, h.shape[1]
        cc = np.bincount(y, minlength=K)
        acc = ClassStatsAccumulator(K, d, class_counts=cc, train_counts=tc)
        part = np.arange(len(y))[rank::world]
        # the ranks see different class mixes, hence different shifts (first-batch means)
        acc.update(torch.as_tensor(h[part]), torch.as_tensor(y[part]))
        acc.all_reduce()
        st = acc.result()
        if rank == 0:
            np.savez(path, within=st.within.numpy(), within_cb=st.within_cb.numpy(), means=st.means.numpy(),
                     counts=st.counts)
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
def test_all_reduce_over_two_gloo_ranks(tmp_path):
    import torch.multiprocessing as mp

    h, y, W, b = _random_split(seed=2, N=1200)
    tc = [400, 300, 150, 90, 50, 15, 8]
    order = np.argsort(y, kind="stable")  # rank 0 / rank 1 see different class mixes
    h, y = h[order], y[order]
    path = str(tmp_path / "r0.npz")
    mp.spawn(_ddp_worker, args=(2, _free_port(), path, h, y, tc), nprocs=2, join=True)
    got = np.load(path)
    whole = stats_of(h, y, 7, train_counts=tc)
    assert np.array_equal(got["counts"], whole.counts)
    assert np.allclose(got["means"], whole.means.numpy(), rtol=1e-12, atol=1e-12)
    assert np.allclose(got["within"], whole.within.numpy(), rtol=1e-10, atol=1e-9)
    assert np.allclose(got["within_cb"], whole.within_cb.numpy(), rtol=1e-10, atol=1e-11)


# ------------------------------------------------------------------ float32 robustness
def test_float32_large_offset_matches_float64():
    """N=20000, d=256, K=50, post-ReLU-like features with a large common offset (8..10)
    and within-class std 0.5, streamed in batches of 4096. Stated tolerance: float32 inputs
    give every figure within 1e-6 relative (1e-8 absolute near 0) of the float64 inputs
    (observed: <= 3e-8, all of it the rounding of the inputs to float32), and exactly /
    within 1e-10 of the same float32 values fed as float64 (the accumulation adds nothing)."""
    g = torch.Generator().manual_seed(0)
    N, d, K = 20000, 256, 50
    mu = 8.0 + 2.0 * torch.rand(K, d, generator=g, dtype=torch.float64)
    p = torch.linspace(1, 20, K, dtype=torch.float64)
    y = torch.multinomial(p / p.sum(), N, replacement=True, generator=g)
    h64 = (mu[y] + 0.5 * torch.randn(N, d, generator=g, dtype=torch.float64)).clamp_min(0)
    h32 = h64.float()
    W = torch.randn(K, d, generator=g, dtype=torch.float64)
    tc = torch.bincount(y, minlength=K).numpy() // 4  # about 10..190: spans the three groups
    res = {}
    for name, h in (("f64", h64), ("f32", h32), ("f32_as_f64", h32.double())):
        st = stats_of(h, y, K, train_counts=tc, batch=4096)
        res[name] = compute_nc(st, W, None, tc)
    s64, s32, s32d = (nc_summary(res[k]) for k in ("f64", "f32", "f32_as_f64"))
    assert s64["nc1"] > 1e-3  # not a degenerate configuration
    assert all(s64[k] is not None for k in ("many_w_cos", "few_w_cos", "few_nc1_cb", "w_norm_ratio_many_few"))
    for k in s64:
        if s64[k] is None:
            continue
        assert s32[k] == pytest.approx(s32d[k], rel=1e-10, abs=1e-12), k  # accumulation error
        assert s32[k] == pytest.approx(s64[k], rel=1e-6, abs=1e-8), k  # + input rounding


# ------------------------------------------------------------------ edge cases
def test_absent_class_is_excluded_with_a_note():
    h, y, W, b = _random_split(seed=4, N=800, K=5)
    keep = y != 4
    h, y = h[keep], y[keep]
    K = 5
    st = stats_of(h, y, K, train_counts=[200, 150, 60, 30, 10])
    r = compute_nc(st, W, b, [200, 150, 60, 30, 10])
    assert r["info"]["excluded_classes"] == [4]
    assert any("no sample" in n for n in r["info"]["notes"])
    assert r["per_class"]["means_norm"][4] is None and r["per_class"]["self_duality_cos"][4] is None
    # mean-based figures equal those of the 4-class problem
    st4 = stats_of(h, y, 4, train_counts=[200, 150, 60, 30])
    r4 = compute_nc(st4, W[:4], b[:4], [200, 150, 60, 30])
    for v in ("sample_weighted", "class_balanced"):
        for k, val in r4[v].items():
            assert r[v][k] == pytest.approx(val, rel=1e-9, abs=1e-12), (v, k)
    json.dumps(r, allow_nan=False)
    mats = cosine_matrices(st, W)
    assert np.isnan(mats["means_cos"][4]).all() and not np.isnan(mats["w_cos"]).any()
    # NCM never predicts a class without a mean
    n = ncm_of(st, W, b, h, y)
    assert n.result()["num_samples"] == len(y)


def test_w_shape_errors_name_the_fix():
    h, y, W, b = _random_split(seed=5, N=200, d=6, K=4)
    st = stats_of(h, y, 4)
    with pytest.raises(ValueError, match="pass W.T"):
        compute_nc(st, W.T, b, None)
    with pytest.raises(ValueError, match="expected"):
        compute_nc(st, W[:, :5], b, None)


def test_class_counts_mismatch_and_missing():
    h, y, W, b = _random_split(seed=6, N=300, K=4)
    wrong = np.bincount(y, minlength=4) + np.array([0, 1, 0, 0])
    acc = ClassStatsAccumulator(4, h.shape[1], class_counts=wrong)
    acc.update(torch.as_tensor(h), torch.as_tensor(y))
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        st = acc.result()
    r = compute_nc(st, W, b, None)
    assert r["class_balanced"]["nc1"] is None and r["sample_weighted"]["nc1"] is not None
    assert any("disagree" in n for n in r["info"]["notes"])
    assert r["groups"] is None
    st2 = stats_of(h, y, 4, class_counts=False)
    r2 = compute_nc(st2, W, b, None)
    assert r2["class_balanced"]["nc1"] is None and r2["class_balanced"]["nc3"] is not None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_matches_cpu():
    h, y, W, b = _random_split(seed=7, N=5000, d=64, K=7)
    tc = [400, 300, 150, 90, 50, 15, 8]
    cc = np.bincount(y, minlength=7)
    out = []
    for dev in ("cpu", "cuda"):
        acc = ClassStatsAccumulator(7, 64, device=dev, class_counts=cc, train_counts=tc)
        ht = torch.as_tensor(h, dtype=torch.float32, device=dev)
        yt = torch.as_tensor(y, device=dev)
        for s in range(0, len(y), 1024):
            acc.update(ht[s:s + 1024], yt[s:s + 1024])
        st = acc.result()
        n = NCMAccumulator(st, torch.as_tensor(W, device=dev), torch.as_tensor(b, device=dev))
        n.update(ht, yt)
        out.append(compute_nc(st, W, b, tc, ncm=n))
    assert_nc_close(out[1], out[0], rtol=1e-7, atol=1e-9)

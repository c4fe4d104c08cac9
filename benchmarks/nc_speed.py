"""Speed and memory of the streaming NC metrics at ImageNet-LT-like scale.

Default: N = 100,000 training features of d = 2048 (ResNet-50), K = 1,000 long-tailed
classes (n_max/n_min = 100, so the many/medium/few groups are all populated), streamed in
batches of 4096 generated on the fly (never holding N x d), on the CPU:

    pass 1  ClassStatsAccumulator (class_counts and train_counts given: class-balanced and
            per-group moments, i.e. 2 x 3 float64 d x d matrices)
    pass 2  NCMAccumulator (NC4, classifier and NCM accuracy)
    then    compute_nc and cosine_matrices

Peak memory is the process's ru_maxrss (tracemalloc does not see torch allocations);
the accumulators' own sizes are reported next to it. Results go to
benchmarks/results/nc_speed_<device>.json.

    .venv/bin/python benchmarks/nc_speed.py [--n 100000 --dim 2048 --classes 1000 --batch 4096 --device cpu]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

from allnc.metrics import ClassStatsAccumulator, NCMAccumulator, compute_nc, cosine_matrices, group_classes, nc_summary


def maxrss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024.0 if sys.platform != "darwin" else r / 2**20  # KiB on Linux, bytes on macOS


def long_tailed_counts(n_total: int, K: int, imbalance: float) -> np.ndarray:
    """Exponential profile n_i ~ (1/IF)^(i/(K-1)), scaled to sum exactly to n_total."""
    p = (1.0 / imbalance) ** (np.arange(K) / (K - 1))
    if n_total < K:
        raise SystemExit(f"--n {n_total} is smaller than --classes {K}")
    c = np.maximum(np.floor(p / p.sum() * n_total).astype(np.int64), 1)
    c[0] += n_total - c.sum()  # the remainder (or excess) goes to the largest class
    assert c.sum() == n_total and c.min() >= 1
    return c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--imbalance", type=float, default=100.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/nc_speed_<device>.json)")
    args = ap.parse_args()
    N, d, K, B = args.n, args.dim, args.classes, args.batch
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    rss0 = maxrss_mb()
    load0 = os.getloadavg()

    counts = long_tailed_counts(N, K, args.imbalance)
    g = torch.Generator().manual_seed(args.seed)
    labels = torch.repeat_interleave(torch.arange(K), torch.as_tensor(counts))
    labels = labels[torch.randperm(N, generator=g)]  # N int64: 0.8 MB, the only O(N) array
    # class means with a large common offset, like post-ReLU features (K x d, float32)
    mu = (1.0 + 0.5 * torch.randn(K, d, generator=g)).clamp_min(0).to(dev)
    W = (mu - mu.mean(0)) + 0.1 * torch.randn(K, d, generator=g).to(dev)
    b = torch.zeros(K, device=dev)
    gen = torch.Generator(device=dev)

    def batches():
        gen.manual_seed(args.seed + 1)  # the same stream in both passes
        for s in range(0, N, B):
            y = labels[s:s + B].to(dev)
            h = (mu[y] + 0.3 * torch.randn(len(y), d, generator=gen, device=dev)).clamp_min(0)
            yield h, y  # float32 B x d

    def timed(fn):
        """(fn(), seconds), the device synchronised before the clock stops."""
        t = time.perf_counter()
        out = fn()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return out, time.perf_counter() - t

    def stream(acc):
        for h, y in batches():
            acc.update(h, y)
        acc.all_reduce()

    def generate_only():  # time of the generation alone (subtracted from the passes)
        for _ in batches():
            pass

    _, t_gen = timed(generate_only)
    acc = ClassStatsAccumulator(K, d, device=dev, class_counts=counts, train_counts=counts)
    _, t_pass1 = timed(lambda: stream(acc))
    stats, t_result = timed(acc.result)
    rss1 = maxrss_mb()
    ncm = NCMAccumulator(stats, W, b)
    _, t_pass2 = timed(lambda: stream(ncm))
    nc, t_compute = timed(lambda: compute_nc(stats, W, b, counts, ncm=ncm))
    mats, t_cos = timed(lambda: cosine_matrices(stats, W))
    rss2 = maxrss_mb()

    groups = group_classes(counts)
    res = {
        "config": {"n": N, "dim": d, "classes": K, "batch": B, "imbalance": args.imbalance,
                   "device": str(dev), "features_dtype": "float32", "accumulate_dtype": "float64",
                   "group_sizes": {k: len(v) for k, v in groups.items()},
                   "threads": torch.get_num_threads(), "torch": torch.__version__,
                   "machine": platform.machine(), "python": platform.python_version(),
                   "cpu_count": os.cpu_count(),
                   # other processes on the machine slow LAPACK (SVD) and GEMM down a lot
                   "loadavg_1min_start_end": [round(load0[0], 2), round(os.getloadavg()[0], 2)]},
        "seconds": {
            "generate_features_only": round(t_gen, 3),
            "pass1_class_stats_incl_generation": round(t_pass1, 3),
            "pass1_class_stats": round(t_pass1 - t_gen, 3),
            "pass1_result": round(t_result, 3),
            "pass2_ncm_incl_generation": round(t_pass2, 3),
            "pass2_ncm": round(t_pass2 - t_gen, 3),
            "compute_nc": round(t_compute, 3),
            "cosine_matrices": round(t_cos, 3),
            "total_metrics": round(t_pass1 + t_pass2 - 2 * t_gen + t_result + t_compute + t_cos, 3),
        },
        "throughput_samples_per_s": {
            "pass1": round(N / max(t_pass1 - t_gen, 1e-9)),
            "pass2": round(N / max(t_pass2 - t_gen, 1e-9)),
        },
        "memory_mb": {
            "maxrss_after_imports": round(rss0, 1),
            "maxrss_after_pass1": round(rss1, 1),
            "maxrss_end": round(rss2, 1),
            "class_stats_accumulator": round(acc.nbytes() / 2**20, 1),
            "class_stats_result": round(sum(t.numel() * t.element_size() for t in
                                            [stats.means, stats.within] + ([stats.within_cb] if stats.within_cb is not None else []))
                                        / 2**20, 1),
            "cosine_matrices": round(sum(m.nbytes for m in mats.values()) / 2**20, 1),
            "one_batch_float32": round(B * d * 4 / 2**20, 1),
            "one_batch_float64": round(B * d * 8 / 2**20, 1),
            "N_x_d_float32_never_held": round(N * d * 4 / 2**20, 1),
        },
        "summary": nc_summary(nc),
    }
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / f"nc_speed_{dev.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps({k: res[k] for k in ("seconds", "throughput_samples_per_s", "memory_mb")}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

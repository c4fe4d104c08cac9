"""CE, BBN and AllNC on Fashion-MNIST-LT (imbalance 100) on the CPU, several seeds.

    python benchmarks/fmnist_lt.py --out runs/bench-fmnist [--seeds 0 1 2] [--methods ce bbn allnc]
           [--parallel 2] [--nc] [key=value ...]

Runs `allnc train` for every (method, seed) through the grid runner (one process per run,
one thread each, --parallel at once), then writes benchmarks/results/fmnist_lt_cpu.json with
every run's overall and many/medium/few accuracy and the mean and standard deviation over
seeds. Extra key=value overrides apply to every run (for example train.epochs=8). With --nc
it also runs `allnc nc` on every run and adds the minority-collapse figures of the training
features (mean pairwise cosine of the medium and few groups' classifier vectors and centred
class means, class-balanced NC1 and NC3). Finished runs are not run again.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from allnc.rundir import atomic_write_json
from allnc.grid import run_grid

HERE = Path(__file__).resolve().parent


def mean_std(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def nc_figures(run_dir: Path) -> dict:
    """Minority-collapse figures of a run's training features (`allnc nc`, computed once)."""
    if not (run_dir / "nc.json").is_file():
        subprocess.run([sys.executable, "-m", "allnc", "nc", str(run_dir), "--device", "cpu"], check=True,
                       stdout=subprocess.DEVNULL)
    nc = json.loads((run_dir / "nc.json").read_text())["train"]
    g = nc["groups"]
    out = {"nc1_cb": nc["class_balanced"]["nc1"], "nc3_cb": nc["class_balanced"]["nc3"],
           "nc4": (nc.get("nc4") or {}).get("nc4")}
    for grp in ("many", "medium", "few"):
        for k in ("w_cos_mean", "means_cos_mean", "self_duality_cos_mean"):
            out[f"{grp}_{k}"] = g.get(grp, {}).get(k)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/bench-fmnist")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=["ce", "bbn", "allnc"])
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--result", default=str(HERE / "results" / "fmnist_lt_cpu.json"))
    p.add_argument("--nc", action="store_true", help="also measure neural collapse of every run")
    p.add_argument("overrides", nargs="*")
    a = p.parse_args(argv)

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    spec = {
        "out": a.out,
        "max_concurrent": a.parallel,
        "configs": [f"fmnist_lt_{m}" for m in a.methods],
        "seeds": a.seeds,
        "extra_overrides": ["device=cpu", "train.progress=false", *a.overrides],
    }
    t0 = time.time()
    res = run_grid(spec)
    wall = time.time() - t0

    runs, table = [], {}
    for m in a.methods:
        per_seed = []
        for s in a.seeds:
            cands = sorted(Path(a.out).glob(f"fmnist_lt_{m}__*seed{s}*/metrics.json"))
            if not cands:
                continue
            r = json.loads(cands[0].read_text())
            rec = {"method": m, "seed": s, "top1": r["top1"], **{k: r["groups"][k] for k in ("many", "medium", "few")},
                   "wall_time_s": r["wall_time_s"], "git_commit": r.get("git_commit"), "run_dir": str(cands[0].parent)}
            if a.nc:
                rec["nc"] = nc_figures(cands[0].parent)
            runs.append(rec)
            per_seed.append(rec)
        table[m] = {k: dict(zip(("mean", "std"), mean_std([r[k] for r in per_seed])))
                    for k in ("top1", "many", "medium", "few")}
        if a.nc and per_seed:
            table[m]["nc"] = {k: dict(zip(("mean", "std"), mean_std([r["nc"][k] for r in per_seed])))
                              for k in per_seed[0]["nc"]}
        table[m]["seeds"] = [r["seed"] for r in per_seed]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True).stdout.strip()
    out = {
        "benchmark": "Fashion-MNIST-LT, imbalance factor 100, CPU",
        "command": "python benchmarks/fmnist_lt.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "device": f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                  f"{a.parallel} runs at once, 1 thread each",
        "git_commit": commit or None,
        "overrides": spec["extra_overrides"],
        "wall_time_s": round(wall, 1),  # of this invocation (finished runs are not run again)
        "train_time_s_total": round(sum(r["wall_time_s"] for r in runs), 1),  # every run's own wall time
        "failed": [getattr(f, "name", str(f)) for f in getattr(res, "failed", [])],
        "summary": table,
        "runs": runs,
    }
    atomic_write_json(Path(a.result), out)
    print(f"\n{'method':<8} {'top1':>13} {'many':>13} {'medium':>13} {'few':>13}")
    for m, row in table.items():
        cells = []
        for k in ("top1", "many", "medium", "few"):
            mu, sd = row[k]["mean"], row[k]["std"]
            cells.append("-" if mu is None else f"{mu:6.2f} ± {sd:4.2f}")
        print(f"{m:<8} " + " ".join(f"{c:>13}" for c in cells))
    print(f"wrote {a.result} ({wall / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

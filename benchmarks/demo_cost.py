"""Where the demo's time goes, and whether it can be halved at the same accuracy (issue: a faster
demo). Two measurements, one JSON:

    python benchmarks/demo_cost.py [--threads 1] [--out runs/demo_fast] [--data-root DIR]

1. ``batch``: CPU time per image of a training step of the demo's backbone (resnet_small,
   width 16, 28x28 grey images, forward + backward + SGD) at batch sizes 32..256. Process CPU
   time, not wall time, so a busy machine does not inflate it much. If the cost per image
   fell with the batch size, larger batches would be a free speed-up; if it is flat, the demo's
   time is proportional to the images it trains on.
2. ``half``: the demo's AllNC with half the images at the same number of SGD steps (batch 64
   for 6 epochs instead of 128 for 12; decays at the same epochs fractions as near as whole
   epochs allow), on the study's validation split (300 images per class, the test set not
   read). Its validation top-1 at the adaptor's final alpha (what the demo, which has no
   validation split, uses) is compared with the study's trial of the same settings at 12
   epochs (``benchmarks/results/fmnist_study_trials.json``, ``allnc_bal_centre_both_eqn``).
   A run directory that already has ``metrics.json`` is read, not trained again.

Writes ``benchmarks/results/demo_cost.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from allnc.engine.runtime import git_commit
from allnc.rundir import atomic_write_json

HERE = Path(__file__).resolve().parent
HALF = ["train.epochs=6", "train.batch_size=64", "train.milestones=[4, 5]"]
STUDY = ["device=cpu", "train.progress=false", "data.val_per_class=300", "train.eval_test=false",
         "method.gbbn.inference_mix=val"]
BASE_TRIAL = "allnc_bal_centre_both_eqn"


def batch_cost(threads: int, sizes=(32, 64, 128, 256), images: int = 2048) -> dict:
    import torch

    from allnc.models import resnet_small

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    m = resnet_small(16, 1)
    head = torch.nn.Linear(m.out_dim, 10)
    opt = torch.optim.SGD([*m.parameters(), *head.parameters()], lr=0.01, momentum=0.9)
    out = {}
    for bs in sizes:
        x, y = torch.randn(bs, 1, 28, 28), torch.randint(0, 10, (bs,))

        def step():
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(head(m(x)), y).backward()
            opt.step()

        for _ in range(3):
            step()
        n = max(2, images // bs)
        t0 = time.process_time()
        for _ in range(n):
            step()
        out[str(bs)] = round((time.process_time() - t0) / (n * bs) * 1e3, 3)
    return out


def half_run(out: Path, threads: int, data_root: str | None) -> dict:
    run = out / "b64_e6_lr0.1"
    if not (run / "metrics.json").is_file():
        cmd = [sys.executable, "-m", "allnc", "train", "--config", "fmnist_lt_allnc", "--out", str(run), "--overwrite",
               *STUDY, *HALF] + ([f"data.root={data_root}"] if data_root else [])
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        subprocess.run(cmd, env=env, check=True)
    m = json.loads((run / "metrics.json").read_text())
    cal = m["calibration"]["val_top1_by_alpha"]
    trials = json.loads((HERE / "results" / "fmnist_study_trials.json").read_text())
    base = next(r for r in trials["trials"]["allnc"] if r["name"] == BASE_TRIAL)
    return {"overrides": HALF, "run_dir": str(run), "val_top1_final_alpha": cal["final"],
            "val_top1_chosen_alpha": m["val"]["top1"], "base_trial": BASE_TRIAL,
            "base_val_top1_final_alpha": base["val_top1_final"], "base_val_top1_chosen_alpha": base["val_top1"],
            "difference_final_alpha": round(cal["final"] - base["val_top1_final"], 2)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/demo_fast")
    p.add_argument("--data-root", default=None)
    a = p.parse_args(argv)
    data = {"command": "python benchmarks/demo_cost.py" + (f" --threads {a.threads}" if a.threads != 1 else ""),
            "git_commit": git_commit(), "host": platform.node(), "cpu_cores": os.cpu_count(), "threads": a.threads,
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "batch_cpu_ms_per_image": batch_cost(a.threads), "half": half_run(Path(a.out), a.threads, a.data_root)}
    atomic_write_json(HERE / "results" / "demo_cost.json", data)
    print(json.dumps(data, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

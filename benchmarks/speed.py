"""Training speed of the conventional and the fast data path, in one run on one device.

    python benchmarks/speed.py --data-root DIR [--device cuda] [--epochs 3] [--concurrency 1 4 8]
           [--full] [--json benchmarks/results/speed_<device>.json]

For CE and AllNC on CIFAR-10-LT (imbalance 100, ResNet-32, batch 128) it measures, on the
same device, model and batch:
- seconds per epoch and training images per second of the conventional path (torchvision
  transforms in DataLoader workers, eager step) and of the fast path (device-resident
  uint8 data, batched GPU augmentation, compiled step); the first epoch (compilation) is
  reported apart from the steady epochs;
- the fraction of wall time the GPU is busy on the fast path (kernel time from
  torch.profiler over the wall time of the profiled steps);
- the total throughput of 1, 4 and 8 concurrent fast-path CE runs (separate processes);
- with --full, the wall time of complete 200-epoch CE and AllNC runs (compilation included)
  and their test accuracy, next to a conventional-path CE run of the same seed.
Targets (issue "GPU fast path"): CE 200 epochs <= 60 s, >= 5x the conventional images/s,
AllNC <= 150 s, 8 concurrent runs >= 3x one run, fast and conventional CE within 1 point.

--config-prefix fmnist_lt with --device cpu gives a small smoke run on a CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from allnc.config import load_config
from allnc.rundir import atomic_write_json
from allnc.engine.runtime import device_name, git_commit, resolve_device, versions
from allnc.engine.trainer import Trainer

HERE = Path(__file__).resolve().parent


def _images_per_step(trainer) -> int:
    return sum(int(trainer.cfg.train.batch_size) for _ in trainer.loaders)


def measure(config: str, pipeline: str, args, tmp: Path) -> dict:
    """A short run; per-epoch times come from the run's own log."""
    compile_ = "on" if pipeline == "fast" and args.device.startswith("cuda") else "off"
    cfg = load_config(config, [f"data.root={args.data_root}", f"device={args.device}", f"data.pipeline={pipeline}",
                               f"train.epochs={args.epochs}", "train.progress=false", "train.eval_every=1000",
                               "train.ckpt_every=1000", f"train.compile={compile_}",
                               f"data.num_workers={args.workers}", *args.overrides])
    t0 = time.time()
    tr = Trainer(cfg, tmp / f"{config}-{pipeline}", overwrite=True, log=lambda *a: None)
    setup = time.time() - t0
    tr.fit()
    times = [h["time_s"] for h in tr.history]
    steady = times[1:] or times
    per_epoch = sum(steady) / len(steady)
    imgs = _images_per_step(tr) * tr.steps
    return {"config": config, "pipeline": pipeline, "compiled": tr.stepper.info["used"],
            "setup_s": round(setup, 2), "first_epoch_s": round(times[0], 3), "epoch_s": round(per_epoch, 3),
            "images_per_s": round(imgs / per_epoch, 1), "steps_per_epoch": tr.steps, "epochs": len(times),
            "trainer": tr}


def gpu_busy_fraction(tr, steps: int = 30) -> float | None:
    """Kernel time over wall time for `steps` training steps of an already warm trainer."""
    if tr.device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    from allnc.methods import StepState

    for ld in tr.loaders:
        ld.set_epoch(0)
    it = zip(*tr.loaders)
    tr.method.train()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        t0 = time.time()
        for s, batches in zip(range(steps), it):
            tr.stepper.step([tr._to_device(b) for b in batches], StepState(0, 1, s, tr.steps))
        torch.cuda.synchronize()
        wall = time.time() - t0
    kernel_us = sum(e.device_time_total for e in prof.key_averages() if e.device_type.name == "CUDA")
    return round(min(kernel_us / 1e6 / wall, 1.0), 4)


def concurrent_throughput(n: int, config: str, args, tmp: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 2) // n)))
    cmd = [sys.executable, "-m", "allnc", "train", "--config", config, f"data.root={args.data_root}",
           f"device={args.device}", "data.pipeline=fast", f"train.epochs={args.epochs}", "train.progress=false",
           "train.eval_every=1000", "train.ckpt_every=1000", *args.overrides]
    t0 = time.time()
    procs = [subprocess.Popen(cmd + ["--out", str(tmp / f"conc{n}-{i}"), "--overwrite", f"seed={i}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env) for i in range(n)]
    errs = [p.communicate()[1].decode()[-500:] for p in procs]
    wall = time.time() - t0
    ok = [p.returncode == 0 for p in procs]
    steady = []
    for i in range(n):
        lines = (tmp / f"conc{n}-{i}" / "metrics.jsonl").read_text().splitlines() if ok[i] else []
        hist = [json.loads(x) for x in lines]
        if len(hist) > 1:
            steady.append(sum(h["time_s"] for h in hist[1:]) / (len(hist) - 1))
    return {"runs": n, "all_ok": all(ok), "wall_s": round(wall, 2),
            "steady_epoch_s_mean": round(sum(steady) / len(steady), 3) if steady else None,
            "errors": [e for e, o in zip(errs, ok) if not o]}


def full_run(config: str, pipeline: str, args, tmp: Path) -> dict:
    compile_ = "auto" if pipeline == "fast" else "off"
    cfg = load_config(config, [f"data.root={args.data_root}", f"device={args.device}", f"data.pipeline={pipeline}",
                               "train.progress=false", f"train.compile={compile_}", f"data.num_workers={args.workers}",
                               *args.overrides])
    t0 = time.time()
    m = Trainer(cfg, tmp / f"full-{config}-{pipeline}", overwrite=True, log=lambda *a: None).fit()
    return {"config": config, "pipeline": pipeline, "epochs": int(cfg.train.epochs),
            "wall_s_total": round(time.time() - t0, 1), "top1": m["top1"], "groups": m["groups"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--config-prefix", default="cifar10_lt")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--concurrency", type=int, nargs="*", default=[1, 4, 8])
    p.add_argument("--full", action="store_true")
    p.add_argument("--json", default=None)
    p.add_argument("overrides", nargs="*", help="key=value applied to every run")
    args = p.parse_args(argv)
    dev = resolve_device(args.device)
    tmp = Path(tempfile.mkdtemp(prefix="allnc-speed-"))
    out = {"device": device_name(dev), "host": platform.node(), "cpu_cores": os.cpu_count(), "versions": versions(),
           "git_commit": git_commit(), "command": "python benchmarks/speed.py " + " ".join(argv or sys.argv[1:]),
           "paths": [], "concurrency": [], "full_runs": []}
    for method in ("ce", "allnc"):
        config = f"{args.config_prefix}_{method}"
        for pipeline in ("conventional", "fast"):
            r = measure(config, pipeline, args, tmp)
            tr = r.pop("trainer")
            if pipeline == "fast":
                r["gpu_busy_fraction"] = gpu_busy_fraction(tr)
            out["paths"].append(r)
            print(json.dumps(r), flush=True)
    for n in args.concurrency:
        r = concurrent_throughput(n, f"{args.config_prefix}_ce", args, tmp)
        out["concurrency"].append(r)
        print(json.dumps(r), flush=True)
    if args.full:
        for config, pipeline in ((f"{args.config_prefix}_ce", "fast"), (f"{args.config_prefix}_allnc", "fast"),
                                 (f"{args.config_prefix}_ce", "conventional")):
            r = full_run(config, pipeline, args, tmp)
            out["full_runs"].append(r)
            print(json.dumps(r), flush=True)
    # derived figures against the targets
    by = {(r["config"].rsplit("_", 1)[-1], r["pipeline"]): r for r in out["paths"]}
    ce_c, ce_f = by.get(("ce", "conventional")), by.get(("ce", "fast"))
    conc = {r["runs"]: r for r in out["concurrency"]}
    derived = {}
    if ce_c and ce_f:
        derived["fast_over_conventional_ce"] = round(ce_f["images_per_s"] / ce_c["images_per_s"], 2)
    if 1 in conc and 8 in conc and conc[1]["steady_epoch_s_mean"] and conc[8]["steady_epoch_s_mean"]:
        derived["throughput_8_over_1"] = round(8 * conc[1]["steady_epoch_s_mean"] / conc[8]["steady_epoch_s_mean"], 2)
    out["derived"] = derived
    path = Path(args.json or HERE / "results" / f"speed_{dev.type}.json")
    atomic_write_json(path, out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Does every method of the device plan compile with inductor, in the GPU's precision, under
this machine's torch? Checked on the CPU, before a GPU's minutes are spent on it.

    python benchmarks/compile_check.py [--methods allnc ce ...] [--jobs 2] [--extra key=value ...]
        [--out benchmarks/results/compile_check_cpu.json]

Each method's CIFAR-10-LT config (ResNet-32, as in the device plan) trains one epoch on tiny
generated CIFAR-like images with the plan's compiled step: ``train.compile=on``,
``compile_backend=inductor``, bf16 autocast (``train.amp=bf16``) and channels_last, on the CPU.
The JSON records for each method whether the compiled step was used, the compiler's reason
when it was not (the whole traceback stays in the run's ``compile_error.txt``), the probe's
seconds, and torch's version.

Inductor's CPU code generation is not its GPU (Triton) one, so a pass here does not prove the
GPU; but a failure in the passes both share (pattern matching, scheduling, memory planning)
shows here first, at no device time. Under torch 2.11 two did: ``x[torch.randperm(n)]`` in
mixup (fixed ETF + DR) and the peak-memory reordering (LDAM-DRW, fixed ETF + DR, BCL); see
``allnc.methods.base.mixup_draw`` and ``allnc.engine.stepper.INDUCTOR_OPTIONS``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from allnc.engine.runtime import git_commit, versions
from allnc.rundir import atomic_write_json

from demo_time import cpu_model  # sibling scripts (benchmarks/ is on the path of `python benchmarks/...`)
from device_suite import PLANS, make_tiny_cifar

ROOT = Path(__file__).resolve().parents[1]
GPU_LIKE = ["train.compile=on", "train.compile_backend=inductor", "train.compile_mode=default", "train.amp=bf16",
            "train.channels_last=on"]


def check(method: str, prefix: str, data: Path, work: Path, extra: list[str]) -> dict:
    out = work / method
    cmd = [sys.executable, "-m", "allnc", "train", "--config", f"{prefix}_{method}", "--out", str(out), "--overwrite",
           "device=cpu", "train.progress=false", f"data.root={data}", "data.imbalance_factor=10", "data.num_workers=0",
           "train.epochs=1", "train.batch_size=32", *GPU_LIKE, *extra]
    # a cache of its own, emptied by main(): every graph is compiled here, not found from an earlier run
    env = dict(os.environ, OMP_NUM_THREADS="1", TORCHINDUCTOR_CACHE_DIR=str(work / "inductor-cache"))
    t = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    row = {"wall_s": round(time.time() - t, 1), "exit": r.returncode}
    try:
        rec = json.loads((out / "metrics.json").read_text())["compile"]
    except (OSError, ValueError, KeyError):
        row["error"] = (r.stderr.strip().splitlines() or ["?"])[-1][:300]
        return row
    row.update(used=rec["used"], backend=rec["backend"], mode=rec["mode"], probe_s=rec["probe_s"],
               fallback=rec["fallback"])
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plan", default="first", choices=sorted(PLANS))
    p.add_argument("--methods", nargs="+", default=None, help="default: the plan's")
    p.add_argument("--jobs", type=int, default=2, help="methods checked at once (one thread each)")
    p.add_argument("--extra", nargs="*", default=[], help="more key=value overrides for every run")
    p.add_argument("--work", default="runs/compile_check")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "compile_check_cpu.json"))
    a = p.parse_args(argv)
    plan = PLANS[a.plan]
    methods = a.methods or plan["methods"]
    work = Path(a.work).resolve()
    data = work / "tiny-data"
    shutil.rmtree(work / "inductor-cache", ignore_errors=True)
    if not (data / "train").is_dir():
        make_tiny_cifar(data)
    t0 = time.time()
    with ThreadPoolExecutor(a.jobs) as pool:
        rows = dict(zip(methods, pool.map(lambda m: check(m, plan["prefix"], data, work, a.extra), methods)))
    for m, r in rows.items():
        said = "compiled" if r.get("used") else f"NOT compiled: {r.get('fallback') or r.get('error')}"
        print(f"{m:10s} {said} ({r['wall_s']} s)")
    res = {"command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
           "what": "one epoch of each method's CIFAR-10-LT config (ResNet-32) on tiny generated images, on the CPU, "
                   "with the device plan's compiled step: " + " ".join(GPU_LIKE + a.extra),
           "cpu": cpu_model(), "cpu_cores": os.cpu_count(), "jobs": a.jobs,
           "versions": versions(), "git_commit": git_commit(), "total_s": round(time.time() - t0, 1),
           "methods": rows, "all_compiled": all(r.get("used") for r in rows.values())}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(a.out), res)
    print(f"{'all' if res['all_compiled'] else 'NOT all'} compiled; {a.out}")
    return 0 if res["all_compiled"] else 1


if __name__ == "__main__":
    raise SystemExit(main())

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
import sys
import time
from pathlib import Path

from allnc.engine.runtime import cpu_model, git_commit, versions
from allnc.grid import run_grid
from allnc.rundir import atomic_write_json

from device_suite import PLANS, make_tiny_cifar

ROOT = Path(__file__).resolve().parents[1]
GPU_LIKE = ["train.compile=on", "train.compile_backend=inductor", "train.compile_mode=default", "train.amp=bf16",
            "train.channels_last=on"]


def row_of(run_dir: Path, secs: float | None, reason: str | None) -> dict:
    """What the check records of one method's run: its compile record, or why it has none."""
    row = {"wall_s": None if secs is None else round(secs, 1)}
    try:
        rec = json.loads((run_dir / "metrics.json").read_text())["compile"]
    except (OSError, ValueError, KeyError):
        row["error"] = reason or "no metrics.json"
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
    # every graph compiled here, none found from an earlier check: fresh run directories and a
    # cache of the check's own (the grid's processes inherit this environment)
    for d in ("runs", "inductor-cache"):
        shutil.rmtree(work / d, ignore_errors=True)
    os.environ.update(OMP_NUM_THREADS="1", TORCHINDUCTOR_CACHE_DIR=str(work / "inductor-cache"))
    if not (data / "train").is_dir():
        make_tiny_cifar(data)
    runs = [{"config": f"{plan['prefix']}_{m}", "name": m} for m in methods]
    extra = ["device=cpu", "train.progress=false", f"data.root={data}", "data.imbalance_factor=10",
             "data.num_workers=0", "train.epochs=1", "train.batch_size=32", *GPU_LIKE, *a.extra]
    secs: dict[str, float] = {}
    t0 = time.time()
    res = run_grid({"runs": runs, "max_concurrent": a.jobs, "extra_overrides": extra}, out=work / "runs",
                   on_done=lambda spec, s: secs.__setitem__(spec.name, s))
    rows = {s.name: row_of(s.run_dir, secs.get(s.name), res.reasons.get(s.name)) for s in res.runs}
    for m, r in rows.items():
        said = "compiled" if r.get("used") else f"NOT compiled: {r.get('fallback') or r.get('error')}"
        print(f"{m:10s} {said} ({r['wall_s']} s)")
    rec = {"command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
           "what": "one epoch of each method's CIFAR-10-LT config (ResNet-32) on tiny generated images, on the CPU, "
                   "with the device plan's compiled step: " + " ".join(GPU_LIKE + a.extra),
           "cpu": cpu_model(), "cpu_cores": os.cpu_count(), "jobs": a.jobs,
           "versions": versions(), "git_commit": git_commit(), "total_s": round(time.time() - t0, 1),
           "methods": rows, "all_compiled": all(r.get("used") for r in rows.values())}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(a.out), rec)
    print(f"{'all' if rec['all_compiled'] else 'NOT all'} compiled; {a.out}")
    return 0 if rec["all_compiled"] else 1


if __name__ == "__main__":
    raise SystemExit(main())

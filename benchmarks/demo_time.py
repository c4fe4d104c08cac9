"""The demo's wall time and accuracy: the earlier demo configurations against today's, in one
run, one after the other, on the same machine with the same thread count.

    python benchmarks/demo_time.py [--threads 2] [--data-root DIR] [--out runs/demo_time]

"earlier" is ``fmnist_lt_allnc`` with the settings it had before the method study
(reversed sampler, BBN's half mix, uncentred HyCon on the conventional branch, no equinorm,
the mix's factor 1:
the demo when the faster demo was asked for); "full" is ``fmnist_lt_allnc`` as it is (the
full-resolution width-16 model, the demo until the ``fast`` preset); "demo" is
``fmnist_lt_allnc_fast`` (what ``bash scripts/setup.sh demo`` trains). Each is a separate
``allnc train`` process (its output goes to this terminal, bar and all); the wall time is the
process's, start to exit. Test top-1 is read once per configuration. Writes
``benchmarks/results/demo_time.json``.
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

from allnc.engine.runtime import cpu_model, git_commit
from allnc.rundir import atomic_write_json

HERE = Path(__file__).resolve().parent
EARLIER = ["method.gbbn.sampler=reversed", "method.gbbn.inference_mix=half", "method.hycon.centre=false",
           "method.hycon.anchors=conventional", "method.p2p.equinorm=0", "method.gbbn.mix_scale=1.0"]
# (row, config, overrides), timed one after the other
RUNS = (("earlier", "fmnist_lt_allnc", EARLIER), ("full", "fmnist_lt_allnc", []), ("demo", "fmnist_lt_allnc_fast", []))
EARLIER_ROWS = [name for name, _, _ in RUNS if name != "demo"]  # what today's demo is compared with


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", default="runs/demo_time")
    a = p.parse_args(argv)
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "MKL_NUM_THREADS": str(a.threads)}
    rows = {}
    for name, config, extra in RUNS:
        out = Path(a.out) / name
        cmd = [sys.executable, "-m", "allnc", "train", "--config", config, "--out", str(out), "--overwrite",
               "device=cpu", *extra] + ([f"data.root={a.data_root}"] if a.data_root else [])
        print(f"== {name}: {' '.join(cmd[2:])}", flush=True)
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, check=True)
        wall = time.perf_counter() - t0
        m = json.loads((out / "metrics.json").read_text())
        rows[name] = {"config": config, "overrides": extra, "process_wall_s": round(wall, 1),
                      "train_wall_s": round(m["wall_time_s"], 1), "top1": m["top1"], "groups": m["groups"]}
        print(f"== {name}: {wall:.0f} s, test top-1 {m['top1']:.2f}", flush=True)
    rec = {"command": "python benchmarks/demo_time.py" + (f" --threads {a.threads}" if a.threads != 2 else ""),
           "git_commit": git_commit(), "cpu": cpu_model(), "cpu_cores": os.cpu_count(), "threads": a.threads,
           "host": platform.node(), "date": time.strftime("%Y-%m-%d %H:%M:%S"), "runs": rows,
           "speedup": {k: round(rows[k]["process_wall_s"] / rows["demo"]["process_wall_s"], 3) for k in EARLIER_ROWS},
           "top1_change": {k: round(rows["demo"]["top1"] - rows[k]["top1"], 2) for k in EARLIER_ROWS}}
    atomic_write_json(HERE / "results" / "demo_time.json", rec)
    print(json.dumps({k: rec[k] for k in ("cpu", "threads", "speedup", "top1_change")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

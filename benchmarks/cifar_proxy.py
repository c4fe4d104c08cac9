"""A CPU proxy of the CIFAR-10-LT question: AllNC, its ablations and BBN on a CIFAR-10 image
folder (the JPEG copy in practice), IF 100, the ResNet-32 at half resolution (stem stride 2), 40
epochs, lr 0.1 with 2 warm-up epochs, x0.01 at 32 and 36, one seed, a balanced validation
split of 50 images per class; validation only, the test set is never read.

    python benchmarks/cifar_proxy.py run NAME CONFIG --data-root DIR [key=value ...]
    python benchmarks/cifar_proxy.py record NAME [--runs runs/cifar_proxy]
    python benchmarks/cifar_proxy.py steps NAME --data-root DIR [--epochs 8] [key=value ...]

``run`` trains ``runs/cifar_proxy/NAME`` (one thread) and records it; ``record`` (re)writes
NAME's entry of ``benchmarks/results/cifar_proxy_cpu.json`` from its run directory: validation
top-1 at the mix chosen on validation and at every mix, the per-epoch losses and validation
top-1, wall time, commit and overrides. Two-branch runs choose their mix on validation
(``method.gbbn.inference_mix: auto`` with the split).

``steps`` trains AllNC (``cifar10_lt_allnc`` and the overrides) for a few epochs at the proxy's
full rate (no decay) and records, per block of 12 steps, the classification loss (mean and
largest) and the norm of HyCon's centre, the class-balanced mean of the conventional branch's
class-mean memory: ``benchmarks/results/cifar_proxy_steps_cpu.json``."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from allnc.engine.runtime import cpu_model
from allnc.rundir import atomic_write_json

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULT = HERE / "results" / "cifar_proxy_cpu.json"
PROXY = ["train.epochs=40", "train.warmup_epochs=2", "train.milestones=[32,36]", "model.stem_stride=2", "device=cpu",
         "data.val_per_class=50", "train.eval_test=false", "train.eval_every=4", "seed=0", "train.progress=false"]


def record(name: str, run_dir: Path, overrides: list[str]) -> dict:
    m = json.loads((run_dir / "metrics.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    cal = m.get("calibration") or {}
    by_epoch = {str(r["epoch"]): round(r["val_top1"], 2) for r in rows if r.get("val_top1") is not None}
    entry = {
        "config": m["config_name"], "overrides": overrides,
        "commit": m.get("git_commit"), "source_modified": m.get("source_modified"),
        "val_top1": round(m["val"]["top1"], 2), "val_groups": m["val"]["groups"],
        "inference_alpha": cal.get("inference_alpha"), "final_alpha": cal.get("final_alpha"),
        "val_top1_by_alpha": cal.get("val_top1_by_alpha"),
        "loss_cls_by_epoch": [r.get("loss_cls", r.get("loss")) for r in rows],
        "loss_by_epoch": [r["loss"] for r in rows], "val_top1_by_epoch": by_epoch,
        "wall_time_s": m.get("wall_time_s"),
        "machine": f"{cpu_model()}, {os.cpu_count()} cores, torch {m['versions'].get('torch')}",
    }
    return store(RESULT, name, entry, {})


def store(path: Path, name: str, entry: dict, header: dict) -> dict:
    """``entry`` as ``runs[name]`` of the results file ``path`` (begun with ``header`` when it
    does not exist), written atomically; returns ``entry``."""
    data = json.loads(path.read_text()) if path.is_file() else {**header, "runs": {}}
    data.setdefault("runs", {})[name] = entry
    atomic_write_json(path, data, indent=1)
    return entry


STEPS_RESULT = HERE / "results" / "cifar_proxy_steps_cpu.json"
BLOCK = 12


def steps(name: str, data_root: str, epochs: int, overrides: list[str], runs: Path) -> dict:
    """The per-step record of ``steps`` (module docstring), written under ``name``."""
    import torch

    from allnc.api import train
    from allnc.config import parse_override
    from allnc.losses import centred_mean
    from allnc.methods.gbbn import GBBN

    torch.set_num_threads(1)
    seen: list[dict] = []
    original = GBBN.training_loss

    def recorded(self, batches, state):  # the method's own step, its logs kept per step
        loss, logs = original(self, batches, state)
        row = {"loss_cls": float(logs["loss_cls"])}
        if hasattr(self, "mem_c"):
            row["centre_norm"] = float(centred_mean(self.mem_c.means, self.mem_c.seen).norm())
        seen.append(row)
        return loss, logs

    over = dict(parse_override(o) for o in PROXY)
    over.update({"train.epochs": epochs, "train.milestones": [10 * epochs], "train.eval_every": 10 * epochs,
                 "train.compile": "off", "data.root": data_root})
    over.update(dict(parse_override(o) for o in overrides))
    GBBN.training_loss = recorded
    try:
        train("cifar10_lt_allnc", runs / f"steps_{name}", over, overwrite=True)
    finally:
        GBBN.training_loss = original
    blocks = [seen[i:i + BLOCK] for i in range(0, len(seen) - BLOCK + 1, BLOCK)]
    entry = {"overrides": overrides, "epochs": epochs, "steps": len(seen), "block": BLOCK,
             "loss_cls_mean": [round(sum(r["loss_cls"] for r in b) / len(b), 3) for b in blocks],
             "loss_cls_max": [round(max(r["loss_cls"] for r in b), 3) for b in blocks],
             "centre_norm_mean": [round(sum(r["centre_norm"] for r in b) / len(b), 3) for b in blocks]
             if seen and "centre_norm" in seen[0] else None,
             "machine": f"{cpu_model()}, {os.cpu_count()} cores"}
    return store(STEPS_RESULT, name, entry, {
        "what": "AllNC on the CIFAR proxy (module docstring of benchmarks/cifar_proxy.py) at the full rate, per 12 "
                "steps: the classification loss (mean, largest) and the norm of HyCon's centre (the class-balanced "
                "mean of the conventional branch's class-mean memory); training loss only, nothing evaluated",
        "command": "python benchmarks/cifar_proxy.py steps NAME --data-root <cifar10-jpeg> [overrides]"})


def jumps(losses: list[float], start: int = 2, stop: int = 32, factor: float = 1.3) -> int:
    """Epochs (0-based ``start`` to ``stop``, the full rate) whose classification loss is more
    than ``factor`` times the epoch before's."""
    return sum(1 for i in range(max(start, 1), min(stop, len(losses))) if losses[i] > factor * losses[i - 1])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("phase", choices=["run", "record", "steps"])
    p.add_argument("name")
    p.add_argument("config", nargs="?")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--data-root")
    p.add_argument("--runs", default=str(ROOT / "runs" / "cifar_proxy"))
    p.add_argument("--epochs", type=int, default=8, help="steps: epochs at the full rate")
    a = p.parse_args(argv)
    run_dir = Path(a.runs) / a.name
    extra = [o for o in (a.config, *a.overrides) if o]  # record, steps: every argument after NAME is an override
    if a.phase == "steps":
        if not a.data_root:
            p.error("steps needs --data-root")
        e = steps(a.name, a.data_root, a.epochs, extra, Path(a.runs))
        print(f"{a.name}: {e['steps']} steps; loss max per block {max(e['loss_cls_max']):.2f}"
              + (f"; centre norm {min(e['centre_norm_mean']):.2f}-{max(e['centre_norm_mean']):.2f}"
                 if e["centre_norm_mean"] else ""))
        return
    if a.phase == "run":
        if not a.config or not a.data_root:
            p.error("run needs CONFIG and --data-root")
        cmd = [sys.executable, "-m", "allnc", "train", "--config", a.config, "--out", str(run_dir),
               f"data.root={a.data_root}", *PROXY, *a.overrides]
        subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        extra = list(a.overrides)
    e = record(a.name, run_dir, extra)
    print(f"{a.name}: val {e['val_top1']} at mix {e['inference_alpha']}, "
          f"{(e['val_top1_by_alpha'] or {}).get('final')} at the final mix; "
          f"loss jumps > 30% in epochs 3-32: {jumps(e['loss_cls_by_epoch'])}")


if __name__ == "__main__":
    main()

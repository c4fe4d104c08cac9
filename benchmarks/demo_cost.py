"""Where the demo's time goes, and what halves it at the same accuracy (issue: a faster demo).
Two measurements, one JSON:

    python benchmarks/demo_cost.py [--threads 1] [--parallel 2] [--out runs/demo_fast] [--data-root DIR]

1. ``batch``: CPU time per image of a training step of the demo's backbone (resnet_small,
   width 16, 28x28 grey images, forward + backward + SGD) at batch sizes 32..256, and of the
   candidate backbones at batch 128. Process CPU time, not wall time, so a busy machine does
   not inflate it much. If the cost per image fell with the batch size, larger batches would
   be a free speed-up; it is flat, so the demo's time is proportional to the images it trains
   on and to the work per image.
2. ``candidates``: the demo's AllNC with less work, each on the study's validation split (300
   images per class, the test set not read), 1 thread per run, two runs at a time:
   half the images at the same number of SGD steps (batch 64 for 6 epochs); the stem
   convolution at stride 2 (every stage at half resolution) at width 24 for 12 epochs, and at
   width 16 for 12, 16, 18 and 24 epochs; seeds 0 and 1 (12 epochs at width 16: seed 0 only).
   Each one's validation top-1 at the adaptor's final alpha (what the demo, which has no
   validation split, uses) is compared with the full-resolution width-16 model at 12 epochs
   of the same seed: seed 0 is the study's trial of the same settings
   (``benchmarks/results/fmnist_study_trials.json``, ``allnc_bal_centre_both_eqn``).
   A run directory that already has ``metrics.json`` is read, not trained again.
3. ``choice``: the shortest stride-2 width-16 schedule whose mean over seeds 0 and 1 is not
   below the full-resolution model's mean. It picks 16 epochs, the ``fast`` preset
   (``fmnist_lt_allnc_fast``, the demo); ``preset_matches_choice`` checks that the preset
   resolves to the chosen candidate's model and schedule.

Writes ``benchmarks/results/demo_cost.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from allnc.config import load_config, to_dict
from allnc.engine.runtime import git_commit
from allnc.grid import run_grid
from allnc.rundir import atomic_write_json

import study_fmnist as study  # the sibling script (benchmarks/ is on the path of `python benchmarks/...`)

HERE = Path(__file__).resolve().parent
HALF = ["train.epochs=6", "train.batch_size=64", "train.milestones=[4, 5]"]
W24 = ["model.stem_stride=2", "model.width=24"]


def s2_schedule(epochs: int, milestones: str, warmup: int = 1, every: int = 100) -> list[str]:
    return ["model.stem_stride=2", f"train.epochs={epochs}", f"train.warmup_epochs={warmup}",
            f"train.milestones={milestones}", f"train.eval_every={every}", f"train.ckpt_every={every}"]


E24 = s2_schedule(24, "[18, 22]", warmup=2, every=8)
E18 = s2_schedule(18, "[14, 17]")
E16 = s2_schedule(16, "[12, 15]")  # the ``fast`` preset's model and schedule (the demo)
# name -> (overrides, seed); "b64_e6_lr0.1" is the half-images run's directory
CANDIDATES = {
    "b64_e6_lr0.1": (HALF, 0),
    "s2_w16": (["model.stem_stride=2"], 0),
    "s2_w16_e24": (E24, 0),
    "s2_w24": (W24, 0),
    "s2_w16_e18": (E18, 0),
    "s2_w16_e16": (E16, 0),
    "base_seed1": ([], 1),
    "s2_w24_seed1": (W24, 1),
    "s2_w16_e24_seed1": (E24, 1),
    "s2_w16_e18_seed1": (E18, 1),
    "s2_w16_e16_seed1": (E16, 1),
}
# backbones timed per image at batch 128: name -> (width, stem_stride)
BACKBONE_VARIANTS = {"w16": (16, 1), "s2_w16": (16, 2), "s2_w24": (24, 2)}


def study_overrides(data_root: str | None) -> list[str]:
    """The method study's trial settings: its validation split, the test set not read, the
    two-branch mix chosen on validation."""
    return [*study.common(argparse.Namespace(data_root=data_root)), "train.eval_test=false",
            "method.gbbn.inference_mix=val"]


def epochs_of(overrides: list[str]) -> int:
    return next((int(o.split("=", 1)[1]) for o in overrides if o.startswith("train.epochs=")), study.EPOCHS)


def batch_cost(threads: int, sizes=(32, 64, 128, 256), images: int = 2048, width: int = 16,
               stem_stride: int = 1) -> dict:
    import torch

    from allnc.models import resnet_small

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    m = resnet_small(width, 1, stem_stride=stem_stride)
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


def base_trial() -> dict:
    """The study's chosen AllNC trial: the settings ``fmnist_lt_allnc`` has, at seed 0."""
    trials = json.loads(study.TRIALS_FILE.read_text())
    return next(r for r in trials["trials"]["allnc"] if r["name"] == trials["chosen"]["allnc"]["name"])


def candidate_runs(out: Path, threads: int, data_root: str | None, parallel: int) -> dict:
    """Every candidate through the grid runner, ``parallel`` at a time with ``threads`` threads
    each; a run directory that already has ``metrics.json`` is read, not trained again."""
    specs = [{"config": "fmnist_lt_allnc", "name": name, "overrides": [*study_overrides(data_root), *extra, f"seed={seed}"]}
             for name, (extra, seed) in CANDIDATES.items()]
    os.environ["OMP_NUM_THREADS"] = str(threads)  # the runs' environment (the grid copies it)
    res = run_grid({"runs": specs, "max_concurrent": parallel}, out=out, log=print)
    if res.failed:
        raise SystemExit(f"demo_cost: {len(res.failed)} candidate runs failed: "
                         + "; ".join(f"{r.name}: {res.reasons.get(r.name, '?')}" for r in res.failed))
    rows = {}
    for name, (extra, seed) in CANDIDATES.items():
        run = out / name
        m = json.loads((run / "metrics.json").read_text())
        rows[name] = {"overrides": extra, "seed": seed, "run_dir": str(run), "train_wall_s": round(m["wall_time_s"], 1),
                      "val_top1_final_alpha": m["calibration"]["val_top1_by_alpha"]["final"],
                      "val_top1_chosen_alpha": round(m["val"]["top1"], 3)}
    return rows


def compare(rows: dict) -> dict:
    """Each candidate against the full-resolution width-16 model of the same seed."""
    base = base_trial()
    ref = {0: {"run": f"study trial {base['name']}", "val_top1_final_alpha": base["val_top1_final"],
               "val_top1_chosen_alpha": base["val_top1"]}}
    if "base_seed1" in rows:
        ref[1] = {"run": "base_seed1", **{k: rows["base_seed1"][k] for k in ("val_top1_final_alpha",
                                                                            "val_top1_chosen_alpha")}}
    for name, r in rows.items():
        if name.startswith("base_") or r["seed"] not in ref:
            continue
        r["reference"] = ref[r["seed"]]["run"]
        r["difference_final_alpha"] = round(r["val_top1_final_alpha"] - ref[r["seed"]]["val_top1_final_alpha"], 2)
    return ref


def choose(rows: dict, ref: dict) -> dict:
    """Mean over seeds 0 and 1 of each candidate with both; the shortest stride-2 width-16
    schedule whose mean is not below the full-resolution model's."""
    base = sum(r["val_top1_final_alpha"] for r in ref.values()) / len(ref)
    means = {}
    for name, r in rows.items():
        other = rows.get(f"{name}_seed1")
        if r["seed"] == 0 and other is not None and not name.startswith("base"):
            means[name] = round((r["val_top1_final_alpha"] + other["val_top1_final_alpha"]) / 2, 2)
    ok = sorted((epochs_of(CANDIDATES[n][0]), n) for n in means
                if n.startswith("s2_w16") and means[n] >= base)
    return {"rule": "shortest stride-2 width-16 schedule with mean val top-1 (seeds 0, 1) >= the full model's",
            "full_model_mean": round(base, 2), "means": means, "chosen": ok[0][1] if ok else None}


def preset_matches(config: str, candidate: str) -> bool:
    """Whether ``config`` resolves to ``fmnist_lt_allnc`` with the candidate's model and training
    settings (its evaluation and checkpoint cadence apart)."""
    cadence = ("eval_every", "ckpt_every")
    a, b = (to_dict(c) for c in (load_config(config), load_config("fmnist_lt_allnc", CANDIDATES[candidate][0])))
    return a["model"] == b["model"] and all(a["train"][k] == b["train"][k] for k in a["train"] if k not in cadence)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/demo_fast")
    p.add_argument("--data-root", default=None)
    p.add_argument("--parallel", type=int, default=2, help="candidate runs at a time")
    a = p.parse_args(argv)
    rows = candidate_runs(Path(a.out), a.threads, a.data_root, a.parallel)
    data = {"command": "python benchmarks/demo_cost.py" + (f" --threads {a.threads}" if a.threads != 1 else "")
            + (f" --parallel {a.parallel}" if a.parallel != 2 else ""),
            "git_commit": git_commit(), "host": platform.node(), "cpu_cores": os.cpu_count(), "threads": a.threads,
            "parallel_runs": a.parallel,
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "batch_cpu_ms_per_image": batch_cost(a.threads),
            "backbone_cpu_ms_per_image_b128": {k: batch_cost(a.threads, (128,), width=w, stem_stride=st)["128"]
                                               for k, (w, st) in BACKBONE_VARIANTS.items()},
            "reference": (ref := compare(rows)), "candidates": rows, "choice": (choice := choose(rows, ref)),
            "preset_matches_choice": choice["chosen"] is not None and preset_matches("fmnist_lt_allnc_fast",
                                                                                     choice["chosen"])}
    atomic_write_json(HERE / "results" / "demo_cost.json", data)
    print(json.dumps(data, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

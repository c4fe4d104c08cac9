"""The budgeted method study on Fashion-MNIST-LT (imbalance 100), on the CPU.

    python benchmarks/study_fmnist.py trials [--out runs/study] [--parallel 2]
    python benchmarks/study_fmnist.py trials --only allnc --why "..."   # one method's trials again
    python benchmarks/study_fmnist.py trials --only crt --why "..."     # a second stage's (crt, mislas, glmc_maxnorm)
    python benchmarks/study_fmnist.py long          # the top methods again at 30 epochs (validation)
    python benchmarks/study_fmnist.py long --only allnc --why "..."    # one method's long run again
    python benchmarks/study_fmnist.py long --only glmc --add --why "..."  # a method outside the four, added
    python benchmarks/study_fmnist.py final         # every method at its chosen setting, test read once
    python benchmarks/study_fmnist.py posthoc       # tau-norm and post-hoc LA of the final CE runs (two rows)
    python benchmarks/study_fmnist.py records       # rewrite the final results files from their run dirs
    python benchmarks/study_fmnist.py geometry      # allnc nc + report of the seed-0 CE and AllNC runs
    python benchmarks/study_fmnist.py errors        # where each method's errors go (validation, seed 0)
    python benchmarks/study_fmnist.py render [--check]  # the docs' trial tables from the results files

Every method gets the same budget: at most six validation trials over its own keys
(``TRIALS``), 12 epochs, seed 0, a balanced validation split of ``VAL`` images per class drawn
from the training images the long tail leaves out (``data.val_per_class``; the head class gives
its share from its training images) and ``train.eval_test=false``: no trial reads the test
set. Two-branch methods choose their inference mix on the validation split after training
(``method.gbbn.inference_mix=val``; the table of every candidate mix is kept), so BBN's 0.5,
the adaptor's final alpha and the chosen one are compared from the same run.

The best trial of each method (validation top-1) is its setting. ``long`` checks on
validation that the ranking of the top methods holds at 30 epochs. ``final`` runs every method
at its setting with seeds 0, 1, 2 at imbalance 100 and seed 0 at 50 and 10 (``--other-seeds``
for more), the AllNC ablation at AllNC's setting (seed 0; ``--ablation-seeds`` for more),
reading the test set once per run (at its end), and writes one results file per run
(``results/<cell>.json``). Finished runs are never run again. A second stage (cRT, MiSLAS,
GLMC + MaxNorm) starts from its source's final run of the same imbalance factor and seed; where
that run's results file exists but its directory is not on this machine, the source is trained
again for its backbone only (``<cell>__backbone``, test set unread).

Results: ``benchmarks/results/fmnist_study_trials.json``, ``..._long.json``; ``results/``.

``render`` rewrites the ``<!-- trials:ID -->`` ... ``<!-- /trials -->`` blocks of
docs/study_fmnist.md and docs/method.md from those files (every trial of every method, the
two-branch methods' inference mixes, the final runs' test top-1); ``--check`` changes nothing
and exits 1 if a doc is stale. tests/test_study_docs.py checks that the docs are up to date.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from allnc.config import cell_name, cell_posthoc
from allnc.rundir import atomic_write_json
from allnc.engine.runtime import cpu_model, git_commit
from allnc.grid import run_grid
from allnc.report.results import (METHOD_NAMES, load_results, markdown_blocks, mean_std, method_label, posthoc_record,
                                  result_record, split_config_name, table_id, update_markdown)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VAL = 300
EPOCHS = 12
LONG_EPOCHS = 30
LONG_TOP = 4  # the best four methods on validation at 12 epochs (AllNC added if not among them)
LONG = ["train.epochs=30", "train.milestones=[22, 27]"]  # the 12-epoch schedule's decays at the same fractions
GBBN = {"bbn", "allnc"}
BAL = "method.gbbn.sampler=balanced"
REV = "method.gbbn.sampler=reversed"
# every two-branch trial states each key it varies, so that it runs the same setting whatever the
# config's defaults are now (the chosen settings became the configs' defaults after the trials)
AL_EARLY = [REV, "method.hycon.centre=false", "method.hycon.anchors=conventional", "method.p2p.equinorm=0.0",
            "method.gbbn.mix_scale=1.0"]  # AllNC's defaults before the study


def _al(*changes: str) -> list[str]:
    """AL_EARLY with ``changes`` (key=value): a key's last value wins, each key once, in order."""
    out: dict[str, str] = {}
    for o in (*AL_EARLY, *changes):
        out[o.split("=")[0]] = o
    return list(out.values())


AL_BEST = _al(BAL, "method.hycon.centre=true", "method.hycon.anchors=both")

# the single-branch methods' trial grids (TRIALS and TRIAL_LABELS)
CE_GRID = [(s, lr) for s in ("instance", "sqrt", "balanced") for lr in (0.1, 0.05)]  # (sampler, lr)
LA_TAUS = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0)
LDAM_GRID = [(m, s) for m in (0.3, 0.5, 0.7) for s in (30.0, 15.0)]  # (max margin, scale)
ETF_GRID = [(a, lr) for a in (0.0, 0.5, 1.0) for lr in (0.1, 0.05)]  # (mixup, lr)
BCL_GRID = [(t, w) for t in (0.07, 0.1) for w in (0.35, 0.6, 1.0)]  # (tau, lambda_scl)
# GLMC: the consistency weight over its released range, at the two pairs of re-sampling and
# label-weighting exponents of its released CIFAR commands
GLMC_GRID = [(cw, q, lw) for q, lw in ((0.0, 1.2), (0.2, 1.0)) for cw in (1.0, 2.0, 4.0)]  # (contrast, q, label)
# PaCo: its two released pairs of sample weight and temperature (CIFAR; ImageNet-LT and
# iNaturalist), each with the key encoder's released momentum and two faster ones (the released
# 0.999 averages over about 1000 steps, most of a 12-epoch run here)
PACO_GRID = [(a, t, m) for a, t in ((0.01, 0.05), (0.05, 0.2)) for m in (0.999, 0.99, 0.9)]  # (alpha, T, momentum)

# method -> [(trial name, config, overrides)]; at most six each
TRIALS: dict[str, list[tuple[str, str, list[str]]]] = {
    "ce": [(f"ce_{s}_lr{lr}", "fmnist_lt_ce", [f"method.sampler={s}", f"train.lr={lr}"]) for s, lr in CE_GRID],
    "la": [(f"la_tau{t}", "fmnist_lt_la", [f"method.la.tau={t}"]) for t in LA_TAUS],
    "ldam_drw": [(f"ldam_m{m}_s{s}", "fmnist_lt_ldam_drw", [f"method.ldam.max_margin={m}", f"method.ldam.scale={s}"])
                 for m, s in LDAM_GRID],
    "etf_dr": [(f"etf_mix{a}_lr{lr}", "fmnist_lt_etf_dr", [f"train.mixup={a}", f"train.lr={lr}"]) for a, lr in ETF_GRID],
    "bcl": [(f"bcl_tau{t}_scl{w}", "fmnist_lt_bcl", [f"method.bcl.tau={t}", f"method.bcl.lambda_scl={w}"])
            for t, w in BCL_GRID],
    "glmc": [(f"glmc_cw{cw:g}_q{q:g}_lw{lw:g}", "fmnist_lt_glmc",
              [f"method.glmc.contrast_weight={cw}", f"method.glmc.resample_weighting={q}",
               f"method.glmc.label_weighting={lw}"]) for cw, q, lw in GLMC_GRID],
    "paco": [(f"paco_a{a:g}_t{t:g}_m{m:g}", "fmnist_lt_paco",
              [f"method.paco.alpha={a}", f"method.paco.temperature={t}", f"method.paco.momentum={m}"])
             for a, t, m in PACO_GRID],
    "bbn": [("bbn_rev_x2", "fmnist_lt_bbn", [REV]),
            ("bbn_rev_x1", "fmnist_lt_bbn", [REV, "method.gbbn.mix_scale=1.0"]),
            ("bbn_bal_x2", "fmnist_lt_bbn", [BAL]),
            ("bbn_bal_x1", "fmnist_lt_bbn", [BAL, "method.gbbn.mix_scale=1.0"]),
            ("bbn_rev_x2_protocol", "fmnist_lt_bbn_protocol", [REV]),
            ("bbn_bal_x2_protocol", "fmnist_lt_bbn_protocol", [BAL])],
    # the reconstruction's options, added one at a time (docs/method.md says which the paper supports)
    "allnc": [("allnc_default", "fmnist_lt_allnc", AL_EARLY),
              ("allnc_bal", "fmnist_lt_allnc", _al(BAL)),
              ("allnc_bal_centre", "fmnist_lt_allnc", _al(BAL, "method.hycon.centre=true")),
              ("allnc_bal_centre_both", "fmnist_lt_allnc", AL_BEST),
              ("allnc_bal_centre_both_eqn", "fmnist_lt_allnc", _al(*AL_BEST, "method.p2p.equinorm=1.0")),
              ("allnc_bal_centre_both_eqn_x2", "fmnist_lt_allnc",
               _al(*AL_BEST, "method.p2p.equinorm=1.0", "method.gbbn.mix_scale=2.0"))],
}
# cRT re-trains the classifier of a finished instance-sampled CE trial, with the released
# code's BN shift and class-aware sampler (each stated), and the square-root sampler beside it
CRT_GRID = ((4, 0.1, "class_aware"), (4, 0.02, "class_aware"), (8, 0.1, "class_aware"), (8, 0.02, "class_aware"),
            (4, 0.1, "sqrt"), (4, 0.02, "sqrt"))  # (epochs, lr, sampler)
CRT = [(f"crt_e{e}_lr{lr}_{s}", "fmnist_lt_crt",
        [f"train.epochs={e}", f"train.lr={lr}", f"method.crt.sampler={s}", "method.crt.shift_bn=true"])
       for e, lr, s in CRT_GRID]
# MiSLAS trains its second stage on a first stage of its own: CE with mixup (alpha 1, the
# released recipe) at the rate of the best instance-sampled CE trial. Its six trials vary the
# second stage's keys over the range of its released configs: the head class's smoothing
# factor and whether BN statistics shift (the CIFAR-10 configs' lr_factor 0.5 and 10 epochs),
# with the released class-aware sampler (stated, as the two-branch trials state their keys)
MISLAS_STAGE1 = "mislas_stage1"
MISLAS_GRID = [(h, bn) for h in (0.1, 0.2, 0.3) for bn in (False, True)]  # (smooth_head, shift_bn)
MISLAS = [(f"mislas_h{h}_{'shift' if bn else 'fixed'}", "fmnist_lt_mislas",
           [f"method.mislas.smooth_head={h}", f"method.mislas.shift_bn={'true' if bn else 'false'}",
            "method.mislas.sampler=class_aware"])
          for h, bn in MISLAS_GRID]
# GLMC + MaxNorm, the variant GLMC's authors report: weight balancing's second stage on the
# best GLMC trial's backbone. Its six trials vary the stage's own knob, weight decay (the
# released 0.1 and two weaker), with the released class-balanced BCE and with class-balanced CE
# (its other keys at the released demo's: lr 0.01, 10 epochs, thresh 0.1)
MAXNORM_GRID = [(loss, wd) for loss in ("cb_bce", "cb_ce") for wd in (0.1, 0.01, 0.001)]
GLMC_MAXNORM = [(f"glmc_maxnorm_{loss}_wd{wd:g}", "fmnist_lt_glmc_maxnorm",
                 [f"method.maxnorm.loss={loss}", f"train.weight_decay={wd}"]) for loss, wd in MAXNORM_GRID]
# the methods that train a classifier on another run's backbone, and that run's config
SECOND_STAGE = {"crt": "fmnist_lt_ce", "mislas": "fmnist_lt_ce_mixup", "glmc_maxnorm": "fmnist_lt_glmc"}
SECOND_STAGE_CONFIGS = {f"fmnist_lt_{m}" for m in SECOND_STAGE}
BACKBONE = "__backbone"  # a source's final run trained again for a second stage (``final``)
ABLATION = ["ce_hycon", "ce_p2p", "gbbn_only", "allnc_no_hycon", "allnc_no_p2p", "allnc_no_centre"]

# trial name -> what the docs' tables call it (``render``); every trial of TRIALS and CRT has one
TRIAL_LABELS: dict[str, str] = {
    "ce_instance_lr0.1": "instance sampler, lr 0.1", "ce_instance_lr0.05": "instance, lr 0.05",
    "ce_sqrt_lr0.1": "square-root sampler, lr 0.1", "ce_sqrt_lr0.05": "square-root, lr 0.05",
    "ce_balanced_lr0.1": "class-balanced sampler, lr 0.1", "ce_balanced_lr0.05": "class-balanced, lr 0.05",
    **{f"la_tau{t}": f"tau {t}" for t in LA_TAUS},
    **{f"ldam_m{m}_s{s}": f"max margin {m}, s {s:g}" for m, s in LDAM_GRID},
    **{f"etf_mix{a}_lr{lr}": f"mixup {a:g}, lr {lr}" if a == 0 else f"mixup {a}, lr {lr}" for a, lr in ETF_GRID},
    **{f"bcl_tau{t}_scl{w}": f"tau {t}, lambda_SCL {w}" for t, w in BCL_GRID},
    **{f"glmc_cw{cw:g}_q{q:g}_lw{lw:g}": f"consistency {cw:g}, re-sampling q {q:g}, label weighting {lw:g}"
       for cw, q, lw in GLMC_GRID},
    **{f"paco_a{a:g}_t{t:g}_m{m:g}": f"alpha {a:g}, temperature {t:g}, key momentum {m:g}" for a, t, m in PACO_GRID},
    "bbn_rev_x2": "BBN's recipe: reversed sampler, s = 2", "bbn_rev_x1": "reversed, s = 1",
    "bbn_bal_x2": "balanced sampler, s = 2", "bbn_bal_x1": "balanced, s = 1",
    "bbn_rev_x2_protocol": "reversed, s = 2, BBN's decays at 60/80 %",
    "bbn_bal_x2_protocol": "balanced, s = 2, decays at 60/80 %",
    "allnc_default": "the earlier defaults (reversed sampler)", "allnc_bal": "+ balanced sampler",
    "allnc_bal_centre": "+ HyCon centred", "allnc_bal_centre_both": "+ HyCon anchors on both branches",
    "allnc_bal_centre_both_eqn": "+ P2P equinorm 1.0", "allnc_bal_centre_both_eqn_x2": "+ mix scale 2",
    **{f"crt_e{e}_lr{lr}_{s}": f"{e} epochs, lr {lr}, {'square-root' if s == 'sqrt' else 'class-aware'} sampler, "
       "BN statistics shifted" for e, lr, s in CRT_GRID},
    **{f"mislas_h{h}_{'shift' if bn else 'fixed'}": f"smoothing {h} (head) to 0 (tail), BN statistics "
       + ("shifted" if bn else "kept") + ", class-aware batches" for h, bn in MISLAS_GRID},
    MISLAS_STAGE1: "first stage: CE + mixup 1.0, lr 0.1",
    **{f"glmc_maxnorm_{loss}_wd{wd:g}": f"{'class-balanced BCE' if loss == 'cb_bce' else 'class-balanced CE'}, "
       f"weight decay {wd:g}" for loss, wd in MAXNORM_GRID},
}


def common(args) -> list[str]:
    o = ["device=cpu", "train.progress=false", f"data.val_per_class={VAL}", "data.imbalance_factor=100"]
    if args.data_root:
        o.append(f"data.root={args.data_root}")
    return o


def val_figures(run_dir: Path) -> dict | None:
    try:
        m = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    v = m["val"]
    out = {"val_top1": v["top1"], "val_groups": v["groups"], "wall_time_s": m["wall_time_s"],
           "test_evaluated": m.get("test_evaluated")}
    cal = m.get("calibration")
    if cal:
        t = cal["val_top1_by_alpha"]
        out.update(inference_alpha=cal["inference_alpha"], val_top1_half=t.get("0.5"), val_top1_final=t.get("final"),
                   val_top1_by_alpha=t)
    return out


def run(specs: list[dict], out: Path, args, extra: list[str], deadline: float | None = None):
    env_threads = os.environ.setdefault("OMP_NUM_THREADS", "1")
    spec = {"runs": specs, "max_concurrent": args.parallel, "extra_overrides": extra}
    t0 = time.time()
    res = run_grid(spec, out=out, log=print, deadline=deadline)
    return res, time.time() - t0, env_threads


def trial_specs(cut: tuple[str, ...] = ()) -> list[dict]:
    """``cut``: methods whose unfinished trials are not run (recorded as cut for time)."""
    specs = []
    order = ["allnc", "bbn"] + [m for m in TRIALS if m not in ("allnc", "bbn")]  # the slow two-branch runs first
    for method in order:
        trials = TRIALS[method]
        for name, cfg, ovr in trials:
            if method in cut:
                continue
            o = list(ovr) + (["method.gbbn.inference_mix=val"] if method in GBBN else [])
            specs.append({"config": cfg, "name": name, "overrides": o})
    return specs


def trial_rows(out: Path, trials: list[tuple[str, str, list[str]]], missing: dict) -> list[dict]:
    """One row per trial: its name, config and overrides, and its validation figures (``missing`` if it has none)."""
    return [dict(name=n, config=c, overrides=o, **(val_figures(out / n) or missing)) for n, c, o in trials]


def chosen_entry(r: dict) -> dict:
    """What the trials file keeps of a method's chosen trial."""
    return {"name": r["name"], "config": r["config"], "overrides": r["overrides"], "val_top1": r["val_top1"],
            "inference_alpha": r.get("inference_alpha")}


def best(rows: list[dict]) -> dict:
    return max(rows, key=lambda r: (r["val_top1"], -rows.index(r)))


def provenance(args, command: str) -> dict:
    return {"command": command, "git_commit": git_commit(), "host": platform.node(), "cpu_model": cpu_model(),
            "cpu_cores": os.cpu_count(),
            "threads_per_run": int(os.environ.get("OMP_NUM_THREADS", "1")), "parallel_runs": args.parallel,
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def phase_trials(args) -> dict:
    out = Path(args.out) / "trials"
    only = tuple(args.only or ())
    if only:
        return phase_trials_only(args, only, out)
    cut = tuple(args.cut or ())
    specs = trial_specs(cut)
    run(specs, out, args, common(args) + [f"train.epochs={EPOCHS}", "train.eval_test=false"])
    rows = {}
    for method, trials in TRIALS.items():
        miss = {"cut": "not run: the study's time ran out (--cut)"} if method in cut else {"missing": True}
        rows[method] = trial_rows(out, trials, miss)
    # cRT on the best instance-sampled CE trial's backbone; MiSLAS on a first stage at its rate
    stages = {}
    for method in SECOND_STAGE:  # cRT, MiSLAS (on a first stage of its own), GLMC + MaxNorm
        if method == "mislas":
            if ce_trials(rows["ce"], "instance"):
                rows["mislas"], stages["mislas"] = mislas_trials(args, rows["ce"], out)
            continue
        source = stage_source(method, rows)
        if source is not None:
            rows[method] = second_stage_trials(args, out, STAGE_TRIALS[method][0], source)
    chosen = {m: best([r for r in rs if "val_top1" in r]) for m, rs in rows.items() if any("val_top1" in r for r in rs)}
    cmd = "python benchmarks/study_fmnist.py trials" + "".join(f" --cut {m}" for m in cut)
    data = {**provenance(args, cmd), "val_per_class": VAL, "epochs": EPOCHS, "stages": stages,
            "budget": {m: len(rs) for m, rs in rows.items()},
            "trials_run": {m: sum("val_top1" in r for r in rs) for m, rs in rows.items()}, "trials": rows,
            "chosen": {m: chosen_entry(r) for m, r in chosen.items()}}
    atomic_write_json(HERE / "results" / "fmnist_study_trials.json", data)
    for m, r in sorted(chosen.items(), key=lambda kv: -kv[1]["val_top1"]):
        print(f"{m:10s} {r['val_top1']:6.2f}  {r['name']}")
    return data


def ce_trials(ce_rows: list[dict], sampler: str) -> list[dict]:
    """The finished CE trials with this sampler."""
    return [r for r in ce_rows if "val_top1" in r and f"method.sampler={sampler}" in r["overrides"]]


def second_stage_trials(args, out: Path, trials: list[tuple[str, str, list[str]]], source: str) -> list[dict]:
    """Run ``trials`` on the backbone of the finished run ``out/source`` (validation only) and
    give their rows, ``init_from`` recorded as ``<source>``. A source trial whose run directory
    is not here (an earlier sitting's machine) is trained again first, as its trial ran; its row
    in the trials file stays as recorded."""
    if not (out / source / "metrics.json").is_file():
        spec = [{"config": c, "name": n, "overrides": list(o)} for rows in TRIALS.values() for n, c, o in rows if n == source]
        if not spec:
            raise SystemExit(f"{source}: no finished run in {out} and not a trial this script can run again")
        print(f"{source}: not finished in {out}; trained again as the trials' backbone")
        run(spec, out, args, common(args) + [f"train.epochs={EPOCHS}", "train.eval_test=false"])
    specs = [{"config": c, "name": n, "overrides": o + [f"init_from={out / source}"]} for n, c, o in trials]
    run(specs, out, args, common(args) + ["train.eval_test=false"])
    return [dict(name=n, config=c, overrides=o + [f"init_from=<{source}>"], **(val_figures(out / n) or {"missing": True}))
            for n, c, o in trials]


# the second stages whose trials start from another method's best finished trial (MiSLAS has a
# first stage of its own: mislas_trials): method -> (its trials, the source method, the source's
# sampler among that method's trials, or None for any)
STAGE_TRIALS = {"crt": (CRT, "ce", "instance"), "glmc_maxnorm": (GLMC_MAXNORM, "glmc", None)}


def stage_source(method: str, rows: dict) -> str | None:
    """The trial a second stage's trials start from: the best finished trial of its source
    method (cRT: of the instance-sampled CE trials); None if none finished."""
    _, src, sampler = STAGE_TRIALS[method]
    done = ce_trials(rows[src], sampler) if sampler else [r for r in rows[src] if "val_top1" in r]
    return best(done)["name"] if done else None


def mislas_trials(args, ce_rows: list[dict], out: Path) -> tuple[list[dict], dict]:
    """MiSLAS's first stage (``MISLAS_STAGE1``: CE + mixup at the best instance-sampled CE
    trial's rate), then its six second-stage trials on that backbone. Returns the trial rows
    and the first stage's row."""
    ce_inst = ce_trials(ce_rows, "instance")
    if not ce_inst:
        raise SystemExit("mislas: its first stage takes the rate of the best instance-sampled CE trial; none finished")
    s1 = {"config": "fmnist_lt_ce_mixup", "name": MISLAS_STAGE1,
          "overrides": [o for o in best(ce_inst)["overrides"] if o.startswith("train.lr=")]}
    run([s1], out, args, common(args) + [f"train.epochs={EPOCHS}", "train.eval_test=false"])
    fig = val_figures(out / MISLAS_STAGE1)
    if fig is None:
        raise SystemExit(f"mislas: its first stage ({out / MISLAS_STAGE1}) did not finish")
    return second_stage_trials(args, out, MISLAS, MISLAS_STAGE1), dict(name=MISLAS_STAGE1, **{k: s1[k] for k in ("config", "overrides")}, **fig)


def phase_trials_only(args, only: tuple[str, ...], out: Path) -> dict:
    """``trials --only METHOD``: run that method's trials again (after a change to the code it
    executes) and replace its rows and its chosen setting in the trials file; every other
    method's rows stay as they are. The file's ``reruns`` list says which methods ran again,
    at which commit and why (``--why``)."""
    methods = (*TRIALS, "mislas", *STAGE_TRIALS)
    unknown = sorted(set(only) - set(methods))
    if unknown:
        raise SystemExit(f"--only {unknown[0]}: not a method with trials; choose from {', '.join(methods)}")
    if not args.why:
        raise SystemExit("--only needs --why \"...\": the reason the method's trials run again goes into the trials file")
    data = json.loads(TRIALS_FILE.read_text())
    single = [m for m in only if m in TRIALS]
    specs = [s for s in trial_specs() if any(s["name"] == n for m in single for n, _, _ in TRIALS[m])]
    for sp in specs:
        move_aside(out / sp["name"])  # run again, not taken as finished
    if specs:
        run(specs, out, args, common(args) + [f"train.epochs={EPOCHS}", "train.eval_test=false"])
    for method in only:
        if method == "mislas":
            for name in (MISLAS_STAGE1, *(n for n, _, _ in MISLAS)):
                move_aside(out / name)
            rows, data.setdefault("stages", {})["mislas"] = mislas_trials(args, data["trials"]["ce"], out)
        elif method in STAGE_TRIALS:  # on its source method's best trial now (a method added later starts here)
            trials = STAGE_TRIALS[method][0]
            for name, _, _ in trials:
                move_aside(out / name)
            source = stage_source(method, data["trials"])
            if source is None:
                raise SystemExit(f"--only {method}: its source method has no finished trial")
            rows = second_stage_trials(args, out, trials, source)
        else:
            rows = trial_rows(out, TRIALS[method], {"missing": True})
        if not any("val_top1" in r for r in rows):
            raise SystemExit(f"--only {method}: no trial finished; the trials file is unchanged")
        data["trials"][method] = rows
        data["budget"][method] = len(rows)
        data["trials_run"][method] = sum("val_top1" in r for r in rows)
        data["chosen"][method] = chosen_entry(best([r for r in rows if "val_top1" in r]))
    cmd = "python benchmarks/study_fmnist.py trials" + "".join(f" --only {m}" for m in only)
    data.setdefault("reruns", []).append({**provenance(args, cmd), "methods": list(only), "why": args.why})
    atomic_write_json(TRIALS_FILE, data)
    for m in only:
        print(f"{m:10s} {data['chosen'][m]['val_top1']:6.2f}  {data['chosen'][m]['name']}")
    return data


def chosen_overrides(trials: dict, method: str) -> tuple[str, list[str]]:
    c = trials["chosen"][method]
    ovr = [o for o in c["overrides"] if not o.startswith("init_from=")]
    if method in GBBN:
        ovr = [o for o in ovr if not o.startswith("method.gbbn.inference_mix")] + ["method.gbbn.inference_mix=val"]
    return c["config"], ovr


def move_aside(run_dir: Path) -> Path | None:
    """A run directory about to be run again is renamed (``<name>.before-<time>``), never
    deleted or silently taken as finished; returns the new name (None if there was none)."""
    if not run_dir.exists():
        return None
    dest = run_dir.with_name(f"{run_dir.name}.before-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir.rename(dest)
    print(f"{run_dir.name}: an earlier run moved aside to {dest.name}")
    return dest


def long_methods(trials: dict) -> list[str]:
    """The methods the long phase runs: the best LONG_TOP on validation at 12 epochs, AllNC
    added if not among them. cRT and MiSLAS train a classifier on another run's backbone, so
    their 30-epoch check would need a 30-epoch first stage too: they are left out."""
    ranked = sorted(trials["chosen"], key=lambda m: -trials["chosen"][m]["val_top1"])
    top = [m for m in ranked if m not in SECOND_STAGE][:LONG_TOP]
    return top if "allnc" in top else top + ["allnc"]


def long_name(method: str) -> str:
    return f"{method}_e{LONG_EPOCHS}"


def run_long(args, trials: dict, methods, out: Path) -> None:
    """The methods' 30-epoch runs at their chosen settings, validation only."""
    specs = []
    for m in methods:
        cfg, ovr = chosen_overrides(trials, m)
        specs.append({"config": cfg, "name": long_name(m), "overrides": ovr + LONG})
    stop = time.monotonic() + args.deadline if args.deadline else None
    run(specs, out, args, common(args) + ["train.eval_test=false"], deadline=stop)


def long_row(trials: dict, method: str, figures: dict) -> dict:
    """A method's row of the long file: its chosen trial, that trial's 12-epoch figure, the 30-epoch figures."""
    return {"trial": trials["chosen"][method]["name"], "val_top1_12": trials["chosen"][method]["val_top1"], **figures}


def long_rankings(rows: dict) -> dict:
    return {"ranking_12": sorted(rows, key=lambda m: -rows[m]["val_top1_12"]),
            "ranking_30": sorted([m for m in rows if "val_top1" in rows[m]], key=lambda m: -rows[m]["val_top1"])}


def phase_long(args) -> dict:
    if args.only:
        return phase_long_only(args, tuple(args.only))
    trials = json.loads(TRIALS_FILE.read_text())
    top = long_methods(trials)
    out = Path(args.out) / "long"
    run_long(args, trials, top, out)
    # "ce" is its best trial, which samples class-balanced (the CE + RS row)
    rows = {m: long_row(trials, m, val_figures(out / long_name(m)) or {}) for m in top}
    data = {**provenance(args, "python benchmarks/study_fmnist.py long"), "epochs": LONG_EPOCHS, "extra": LONG,
            "methods": rows, **long_rankings(rows)}
    atomic_write_json(LONG_FILE, data)
    print(json.dumps({k: data[k] for k in ("ranking_12", "ranking_30")}))
    return data


def phase_long_only(args, only: tuple[str, ...]) -> dict:
    """``long --only METHOD``: run that method's 30-epoch run again at its current chosen
    setting (after its trials ran again, ``trials --only``) and replace its row and both
    rankings in the long file; the other rows stay. A ``reruns`` entry says at which commit and
    why (``--why``). It always starts over: an earlier run directory, finished or interrupted, is
    moved aside (``move_aside``)."""
    if not args.why:
        raise SystemExit("--only needs --why \"...\": the reason the method's long run runs again goes into the long file")
    data = json.loads(LONG_FILE.read_text())
    unknown = sorted(set(only) - set(data["methods"]))
    if unknown and not args.add:
        raise SystemExit(f"--only {unknown[0]}: not a method of the long phase; choose from {', '.join(data['methods'])} "
                         f"(or add it: --add)")
    trials = json.loads(TRIALS_FILE.read_text())
    bad = sorted(m for m in unknown if m not in trials["chosen"] or m in SECOND_STAGE)
    if bad:
        raise SystemExit(f"--only {bad[0]} --add: a method with trials of its own and no first stage is needed")
    out = Path(args.out) / "long"
    for m in only:
        move_aside(out / long_name(m))
    run_long(args, trials, only, out)
    # read the file again: another --only run may have written its row while this one trained
    data = json.loads(LONG_FILE.read_text())
    for m in only:
        fig = val_figures(out / long_name(m))
        if fig is None:
            raise SystemExit(f"--only {m}: the run did not finish; the long file is unchanged")
        added = data["methods"].get(m, {}).get("added") or (args.why if m in unknown else None)
        data["methods"][m] = {**long_row(trials, m, fig), **({"added": added} if added else {})}
    rows = data["methods"]
    data.update(long_rankings(rows))
    # the methods the phase would pick now (the best four at 12 epochs): a changed set is said, not hidden
    now = set(long_methods(trials))
    picked = {m for m, r in rows.items() if "added" not in r}
    cmd = "python benchmarks/study_fmnist.py long" + "".join(f" --only {m}" for m in only) + (" --add" if args.add else "")
    data.setdefault("reruns", []).append({**provenance(args, cmd), "methods": list(only), "why": args.why,
                                          "set_unchanged": now == picked,
                                          **({} if now == picked else {"set_now": sorted(now)})})
    atomic_write_json(LONG_FILE, data)
    print(json.dumps({k: data[k] for k in ("ranking_12", "ranking_30")}))
    return data


# the table's rows: study method -> (config, the trial that chose its setting); plain CE is the
# best instance-sampled CE trial, CE + class-balanced sampling the best balanced one
ROWS = {"allnc": "fmnist_lt_allnc", "ce": "fmnist_lt_ce", "ce_rs": "fmnist_lt_ce_rs", "la": "fmnist_lt_la",
        "ldam_drw": "fmnist_lt_ldam_drw", "etf_dr": "fmnist_lt_etf_dr", "bcl": "fmnist_lt_bcl", "bbn": "fmnist_lt_bbn",
        "crt": "fmnist_lt_crt", "ce_mixup": "fmnist_lt_ce_mixup", "mislas": "fmnist_lt_mislas",
        "glmc": "fmnist_lt_glmc", "glmc_maxnorm": "fmnist_lt_glmc_maxnorm", "paco": "fmnist_lt_paco"}
SECTIONS = ("data", "model", "train", "method")


def row_trial(trials: dict, row: str) -> dict:
    if row == "ce_mixup":  # MiSLAS's first stage: one run at the rate CE's trials chose, no trials of its own
        return trials["stages"]["mislas"]
    if row in ("ce", "ce_rs"):
        mode = "instance" if row == "ce" else "balanced"
        return best(ce_trials(trials["trials"]["ce"], mode))
    return trials["chosen"][row]


def check_configs(trials: dict) -> dict:
    """Every row's config must be its chosen trial's config: a results cell's name then
    resolves to the configuration that ran (inference_mix val and auto agree on a run with a
    validation split). Returns row -> the trial that chose it."""
    from omegaconf import OmegaConf

    from allnc.config import load_config

    base = [f"data.val_per_class={VAL}", "data.imbalance_factor=100"]
    chosen = {}
    for row, cfg_name in ROWS.items():
        t = row_trial(trials, row)
        ovr = [o.replace("inference_mix=val", "inference_mix=auto") for o in t["overrides"] if not o.startswith("init_from=")]
        if row in ("allnc", "bbn") and not any("inference_mix" in o for o in ovr):
            ovr.append("method.gbbn.inference_mix=auto")
        a = OmegaConf.to_container(load_config(cfg_name, base))
        b = OmegaConf.to_container(load_config(t["config"], base + ovr))
        diff = [k for k in SECTIONS if a[k] != b[k]]
        if diff:
            raise SystemExit(f"config {cfg_name} differs from its chosen trial {t['name']} in {diff}; "
                             f"set the trial's settings in the config before the final runs")
        chosen[row] = t["name"]
    return chosen


def phase_final(args) -> None:
    """Every row at its config (= its validation-chosen setting): IF 100 seeds 0-2 (--seeds),
    IF 50 and 10 (--other-ifs) seed 0 (--other-seeds N: seeds 0..N-1); the AllNC ablation at
    IF 100, seed 0 (--ablation-seeds N: seeds 0..N-1). Seed 0 of every row and the ablation
    run first. The test set is read once, at the end of each run."""
    trials = json.loads((HERE / "results" / "fmnist_study_trials.json").read_text())
    chosen = check_configs(trials)
    results = Path(args.results)
    out = Path(args.out) / "final"
    plan = [(100, s) for s in range(args.seeds)] + [(imb, s) for s in range(args.other_seeds) for imb in args.other_ifs]
    specs, cells, order = [], {}, {}

    def add(row_cfg, imb, seed, what):
        source = SECOND_STAGE.get(split_config_name(row_cfg)[1])
        epochs = EPOCHS if source is None else _epochs_of(row_cfg)
        cell = cell_name(row_cfg, imb, epochs, seed, VAL)
        if (results / f"{cell}.json").is_file():
            return
        o = [f"data.imbalance_factor={imb}", f"seed={seed}"]
        if source is not None:
            src = cell_name(source, imb, EPOCHS, seed, VAL)
            src_dir = out / src
            if not (src_dir / "metrics.json").is_file() and (results / f"{src}.json").is_file():
                # the source's results stand but its run is not on this machine: trained again
                # for its backbone only, the test set unread, in a directory of its own
                src_dir = out / (src + BACKBONE)
                if src_dir.name not in order:
                    order[src_dir.name] = plan.index((imb, seed))
                    specs.append({"config": source, "name": src_dir.name,
                                  "overrides": [f"data.imbalance_factor={imb}", f"seed={seed}", "train.eval_test=false"]})
                what = {**what, "source_run": f"{src_dir.name} (the source's final run trained again for its "
                                              "backbone, test set unread; its results file stands)"}
            o.append(f"init_from={src_dir}")
        cells[cell] = what
        order[cell] = plan.index((imb, seed))
        specs.append({"config": row_cfg, "name": cell, "overrides": o})

    for imb, seed in plan:
        for row, cfg in ROWS.items():
            add(cfg, imb, seed, {"method": row, "chosen_by_trial": chosen[row]})
        if imb == 100 and seed < args.ablation_seeds:
            for a in ABLATION:
                add(f"fmnist_lt_{a}", 100, seed, {"method": a, "setting": "AllNC's (the config)"})
    extra = common(args) + ["train.eval_every=1000", "train.ckpt_every=1000", f"nc.every={EPOCHS}"]
    # nc.every=EPOCHS: the NC figures of the final model; data.imbalance_factor comes per run
    extra = [e for e in extra if not e.startswith("data.imbalance_factor=")]
    prov = provenance(args, "python benchmarks/study_fmnist.py final" + (f" --seeds {args.seeds}" if args.seeds != 3 else "")
                      + (" --other-ifs " + " ".join(map(str, args.other_ifs)) if args.other_ifs != [50, 10] else "")
                      + (f" --other-seeds {args.other_seeds}" if args.other_seeds != 1 else "")
                      + (f" --ablation-seeds {args.ablation_seeds}" if args.ablation_seeds != 1 else ""))
    t0 = time.time()
    # --deadline: runs still going then stop (resumable, never a result), the rest do not start
    stop = time.monotonic() + args.deadline if args.deadline else None

    def done(spec, secs):
        if spec.name.endswith(BACKBONE):
            return
        rec = result_record(spec.run_dir, spec.name, {
            "data_label": "Fashion-MNIST (lossless, Debian's dataset-fashion-mnist)", "process_wall_s": round(secs, 1),
            "study": {**cells[spec.name], "trials_file": "benchmarks/results/fmnist_study_trials.json", **prov}})
        atomic_write_json(results / f"{spec.name}.json", rec)

    # a cRT or MiSLAS run needs the run it starts from: every other run first, in the plan's
    # order (seed 0 first) and within a (factor, seed) the slowest first (BCL's three views,
    # then the two-branch runs), so that no long run starts last while the other slot idles;
    # then the second stages. The order changes no run's result
    second = [s for s in specs if s["config"] in SECOND_STAGE_CONFIGS]
    first = sorted((s for s in specs if s not in second), key=lambda s: (order[s["name"]], _slow_first(s)))
    for group in (first, second):
        if group:
            run_grid({"runs": group, "max_concurrent": args.parallel, "extra_overrides": extra},
                     out=out, log=print, on_done=done, deadline=stop)
    print(f"final: {time.time() - t0:.0f} s")


SLOW_FIRST = ("fmnist_lt_bcl", "fmnist_lt_glmc", "fmnist_lt_paco", "fmnist_lt_bbn", "fmnist_lt_allnc", "fmnist_lt_gbbn_only")


def _slow_first(spec: dict) -> int:
    return SLOW_FIRST.index(spec["config"]) if spec["config"] in SLOW_FIRST else len(SLOW_FIRST)


POSTHOC_ON = ("fmnist_lt_ce",)  # the decoupling paper's setting: corrections of an instance-sampled CE model


def phase_posthoc(args) -> None:
    """tau-norm and post-hoc logit adjustment (``allnc posthoc``) of every finished final
    run of plain CE: tau chosen on the run's own validation split, the test set read once.
    Each is a results cell ``<run cell>__posthoc_<method>``, a row of the table."""
    results, out = Path(args.results), Path(args.out) / "final"
    prov = provenance(args, "python benchmarks/study_fmnist.py posthoc")
    for cfg in POSTHOC_ON:
        for run_dir in sorted(out.glob(f"{cfg}__if*__val{VAL}__seed*")):
            if not (run_dir / "metrics.json").is_file() or run_dir.name.endswith(BACKBONE):
                continue
            for method in ("tau_norm", "logit_adjust"):
                cell = f"{run_dir.name}__posthoc_{method}"
                if (results / f"{cell}.json").is_file():
                    continue
                t0 = time.time()
                _, rec, r = posthoc_record(run_dir, run_dir.name, method, device="cpu")
                rec.update(data_label="Fashion-MNIST (lossless, Debian's dataset-fashion-mnist)",
                           process_wall_s=round(time.time() - t0, 1),
                           study={"method": f"ce + {method}", "setting": "tau chosen on the run's validation split", **prov})
                atomic_write_json(results / f"{cell}.json", rec)
                print(f"{cell}: tau {r['tau']}, test top-1 {r['test']['top1']:.2f} (run {r['run_test']['top1']:.2f})")


def phase_records(args) -> None:
    """Rewrite the final runs' results files from their run directories (what a results file
    keeps grew after some were written), keeping each file's study provenance."""
    results, out = Path(args.results), Path(args.out) / "final"
    n = 0
    for path in sorted(results.glob(f"fmnist_lt_*__val{VAL}__seed*.json")):  # post-hoc cells too
        old = json.loads(path.read_text())
        run_dir = out / old["cell"].split("__posthoc_")[0]
        if not (run_dir / "metrics.json").is_file():
            continue
        keep = {k: old[k] for k in ("data_label", "process_wall_s", "study") if k in old}
        atomic_write_json(path, result_record(run_dir, old["cell"], keep))
        n += 1
    print(f"records: {n} results files rewritten")


ERRORS_FILE = HERE / "results" / "fmnist_errors.json"
ERRORS_ROWS = {**ROWS, "gbbn_only": "fmnist_lt_gbbn_only"}


def error_figures(confusion, counts) -> dict:
    """Where a run's errors go (``allnc.metrics``): the head-ward share of its errors, that
    share were errors spread evenly, by true group, and the group confusion."""
    from allnc.metrics import error_summary, group_confusion

    return {**error_summary(confusion, counts), "group_shares": group_confusion(confusion, counts)["shares"]}


def phase_errors(args) -> None:
    """Where each row's errors go, on the validation split of its final runs (imbalance 100,
    every seed; the results files keep each run's validation confusion matrix), so that no
    run is trained and no test image is read again."""
    by_row: dict[str, list] = {}
    for rec in load_results(Path(args.results)):
        row = split_config_name(rec["config_name"])[1]
        if (row in ERRORS_ROWS and "__posthoc_" not in rec["cell"] and rec["cell"].startswith(ERRORS_ROWS[row] + "__if100__")
                and f"__val{VAL}__" in rec["cell"] and (rec.get("val") or {}).get("confusion") is not None):
            by_row.setdefault(row, []).append(rec)
    rows = {}
    for row in ERRORS_ROWS:
        recs = sorted(by_row.get(row, []), key=lambda r: r["cell"])
        if recs:
            rows[row] = {"cells": [r["cell"] for r in recs], "val_top1": [r["val"]["top1"] for r in recs],
                         "runs": [error_figures(r["val"]["confusion"], r["class_counts"]) for r in recs]}
    # it trains nothing: the commit and the date are its whole provenance
    atomic_write_json(ERRORS_FILE, {"command": "python benchmarks/study_fmnist.py errors", "git_commit": git_commit(),
                                    "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                                    "split": f"validation ({VAL} images per class) of the final runs", "rows": rows})
    print(f"errors: wrote {ERRORS_FILE} ({len(rows)} rows)")


def render_errors_table(data: dict | None) -> str:
    if not data:
        return "Not run yet (`python benchmarks/study_fmnist.py errors`).\n"
    rows = ["| method | seeds | val top-1 | errors | head-ward | if spread evenly | medium images predicted many | "
            "many images predicted medium |", "|---|---|---|---|---|---|---|---|"]

    def col(row: str, f) -> list:
        return [f(run) for run in data["rows"][row]["runs"]]

    def mean(vals: list) -> float:
        return sum(vals) / len(vals)

    for r in sorted(data["rows"], key=lambda r: mean(col(r, lambda u: u["headward"]))):
        x = data["rows"][r]
        rows.append(_row(METHOD_NAMES.get(r, r), ", ".join(c.rsplit("__seed", 1)[1] for c in x["cells"]),
                         mean_std(x["val_top1"]), f"{mean(col(r, lambda u: u['errors'])):.0f}",
                         mean_std(col(r, lambda u: u["headward"])), mean_std(col(r, lambda u: u["headward_if_even"])),
                         mean_std(col(r, lambda u: u["group_shares"]["medium"]["many"])),
                         mean_std(col(r, lambda u: u["group_shares"]["many"]["medium"]))))
    return "\n".join(rows) + "\n"


GEOMETRY_FILE = HERE / "results" / "fmnist_geometry.json"
GEOMETRY_RUNS = {"CE": "fmnist_lt_ce__if100__e12__val300__seed0", "AllNC": "fmnist_lt_allnc__if100__e12__val300__seed0"}
IMG = ROOT / "docs" / "img"


def geometry_figures(nc_train: dict, classes: list[str]) -> dict:
    """The docs' geometry figures from a run's nc.json (training features of its checkpoint)."""
    g, pc = nc_train["groups"], nc_train["per_class"]
    w = pc["w_norm"]
    medium = [classes[i] for i, grp in enumerate(pc["group"]) if grp == "medium"]
    return {"medium_classes": medium,
            "medium_w_cos": g["medium"]["w_cos_mean"], "medium_means_cos": g["medium"]["means_cos_mean"],
            "w_norm_many": g["many"]["w_norm_mean"], "w_norm_medium": g["medium"]["w_norm_mean"],
            "w_norm_ratio_many_medium": g["norm_ratios"]["w_many_over_medium"],
            "w_norm_min": min(w), "w_norm_min_class": classes[w.index(min(w))],
            "w_norm_max": max(w), "w_norm_max_class": classes[w.index(max(w))],
            "nc1_cb": nc_train["class_balanced"]["nc1"], "nc2_equinorm_w": nc_train["classifier"]["nc2_equinorm_w"]}


def phase_geometry(args) -> None:
    """``allnc nc`` and ``allnc report`` on the seed-0 CE and AllNC final runs (imbalance 100):
    their figures into GEOMETRY_FILE and their cosine and norm pictures into docs/img."""
    import shutil

    from allnc.cli import main as allnc_main

    out = {"command": "python benchmarks/study_fmnist.py geometry", "git_commit": git_commit(),
           "date": time.strftime("%Y-%m-%d %H:%M:%S"), "runs": {}}
    for label, cell in GEOMETRY_RUNS.items():
        run = Path(args.out) / "final" / cell
        for argv in (["nc", str(run), "--device", "cpu"], ["report", str(run)]):
            if allnc_main(argv) != 0:
                raise SystemExit(f"geometry: `allnc {' '.join(argv)}` failed")
        nc = json.loads((run / "nc.json").read_text())["train"]
        metrics = json.loads((run / "metrics.json").read_text())
        out["runs"][label] = {"cell": cell, "checkpoint_epoch": nc["info"]["checkpoint_epoch"],
                              "calibration_alpha": (metrics.get("calibration") or {}).get("inference_alpha"),
                              **geometry_figures(nc, metrics["classes"])}
        for pic in ("cos_train", "norms_train", "errors"):
            shutil.copyfile(run / "report" / f"{pic}.png", IMG / f"fmnist_{label.lower()}_{pic}.png")
    atomic_write_json(GEOMETRY_FILE, out)
    print(f"geometry: wrote {GEOMETRY_FILE.relative_to(ROOT)} and {3 * len(GEOMETRY_RUNS)} pictures in docs/img")


def render_geometry_table(geo: dict | None) -> str:
    if not geo:
        return "(no geometry file yet: run `python benchmarks/study_fmnist.py geometry`)\n"
    runs = geo["runs"]
    labels = list(runs)
    med = " and ".join(runs[labels[0]]["medium_classes"])
    rows = [
        (f"medium classes ({med}): cosine of their classifier vectors", lambda r: f"{r['medium_w_cos']:.3f}"),
        ("medium classes: cosine of their centred class means", lambda r: f"{r['medium_means_cos']:.3f}"),
        ("classifier-row norm, many / medium (group means)",
         lambda r: f"{r['w_norm_many']:.2f} / {r['w_norm_medium']:.2f} (ratio {r['w_norm_ratio_many_medium']:.2f})"),
        ("classifier-row norm, smallest / largest (class)",
         lambda r: f"{r['w_norm_min']:.2f} ({r['w_norm_min_class']}) / {r['w_norm_max']:.2f} ({r['w_norm_max_class']})"),
        ("NC1, class-balanced", lambda r: f"{r['nc1_cb']:.2f}"),
        ("NC2 equinorm of W", lambda r: f"{r['nc2_equinorm_w']:.2f}"),
    ]
    lines = ["| figure | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(f(runs[k]) for k in labels) + " |" for name, f in rows]
    alphas = [f"{k} {runs[k]['calibration_alpha']}" for k in labels if runs[k].get("calibration_alpha") is not None]
    tail = f" Inference mix of the checkpoint (chosen on validation): {', '.join(alphas)}." if alphas else ""
    return "\n".join(lines) + f"\n\n`{geo['command']}` at {geo['git_commit'][:7]}.{tail}\n"


# ---- render: the docs' tables from the results files ------------------------------------

TRIALS_FILE = HERE / "results" / "fmnist_study_trials.json"
LONG_FILE = HERE / "results" / "fmnist_study_long.json"
DOCS = (ROOT / "docs" / "study_fmnist.md", ROOT / "docs" / "method.md")
# a trial that is also the setting of a results row other than its method's own
ROW_NOTES = {"ce": "the plain CE row", "ce_rs": "the CE + class-balanced sampling row"}
METHOD_CELLS = {"crt": "cRT (on the plain CE trial's backbone)", "mislas": "MiSLAS (on its first stage's backbone)",
                "glmc_maxnorm": "GLMC + MaxNorm (on the chosen GLMC trial's backbone)"}
# the docs' blocks: <!-- trials:ID --> ... <!-- /trials -->, apart from the README's results blocks
TAG = "trials"


def _label(name: str) -> str:
    if name not in TRIAL_LABELS:
        raise SystemExit(f"trial {name!r} has no label: add it to TRIAL_LABELS in {Path(__file__).name}")
    return TRIAL_LABELS[name]


def _val(r: dict, bold: bool = False) -> str:
    if "cut" in r:
        return "cut for time"
    if r.get("val_top1") is None:
        return "no result"
    v = f"{r['val_top1']:.2f}"
    return f"**{v}**" if bold else v


def _opt(v) -> str:
    return "–" if v is None else f"{v:.2f}"


def _row(*cells: str) -> str:
    return "|" + "|".join(f" {c} " if c else " " for c in cells) + "|"


def render_trial_tables(trials: dict) -> dict[str, str]:
    """The trials file's tables: ``single`` (every trial of the single-branch methods: label,
    validation top-1, wall time), ``two_branch`` (BBN and AllNC: validation top-1 at the mix
    chosen on validation, at 0.5 and at the adaptor's final alpha) and ``allnc`` (AllNC's
    trials alone, for docs/method.md). Each method's chosen trial is in bold; a trial cut for
    time says so."""
    chosen = {m: c["name"] for m, c in trials["chosen"].items()}
    notes: dict[str, list[str]] = {}
    for row, note in ROW_NOTES.items():
        try:
            notes.setdefault(row_trial(trials, row)["name"], []).append(note)
        except (KeyError, ValueError):
            pass  # the row's trials did not run
    single = ["| method | trial | val top-1 | wall s |", "|---|---|---|---|"]
    two = ["| method | trial | val top-1 (chosen a) | a = 0.5 | a = final |", "|---|---|---|---|---|"]
    allnc = ["| trial | val top-1 | with a = 0.5 | with a = final |", "|---|---|---|---|"]
    for method, rows in trials["trials"].items():
        name = METHOD_CELLS.get(method, METHOD_NAMES.get(method, method))
        stage = trials.get("stages", {}).get(method)
        if stage:  # the one run a second stage starts from (no trial of its own)
            single.append(_row(METHOD_NAMES["ce_mixup"], _label(stage["name"]), _val(stage),
                               f"{stage['wall_time_s']:.0f}"))
        for i, r in enumerate(rows):
            first = name if i == 0 else ""
            best_ = r["name"] == chosen.get(method)
            label = _label(r["name"])
            trial = f"**{label}**" if best_ else label
            if notes.get(r["name"]):
                trial += f" ({'; '.join(notes[r['name']])})"
            if method not in GBBN:
                wall = f"{r['wall_time_s']:.0f}" if r.get("wall_time_s") is not None else ""
                single.append(_row(first, trial, _val(r, best_), wall))
                continue
            val = _val(r, best_)
            if r.get("inference_alpha") is not None:
                val += f" ({r['inference_alpha']:g})"
            half, final = _opt(r.get("val_top1_half")), _opt(r.get("val_top1_final"))
            two.append(_row(first, trial, val, half, final))
            if method == "allnc":
                t = f"{label} (**the default**)" if best_ else label
                allnc.append(_row(t, _val(r, best_), half, final))
    return {"single": "\n".join(single) + "\n", "two_branch": "\n".join(two) + "\n", "allnc": "\n".join(allnc) + "\n"}


def final_records(records: list[dict]) -> list[dict]:
    """The final runs of the study's rows (the ablation left out) at imbalance 100: the cells
    of the README's ``fmnist_lt_if100_e12`` table, post-hoc corrections included."""
    tid = f"fmnist_lt_if100_e{EPOCHS}"
    return [r for r in records if table_id(r) == tid and f"__val{VAL}__" in r["cell"]
            and split_config_name(r["config_name"])[1] in ROWS]


def render_final_table(records: list[dict]) -> str:
    """One line: test top-1, mean ± std over the seeds (as the README's table), per row,
    best first."""
    rows: dict[str, list[float]] = {}
    for r in records:
        rows.setdefault(method_label(r["config_name"], cell_posthoc(r["cell"])), []).append(r["top1"])
    order = sorted(rows, key=lambda k: -sum(rows[k]) / len(rows[k]))
    if not order:
        return "No results yet.\n"
    return "\n".join(["| " + " | ".join(order) + " |", "|" + "---|" * len(order),
                      "| " + " | ".join(mean_std(rows[k]) for k in order) + " |"]) + "\n"


def render_long_table(long: dict | None) -> str:
    """The 30-epoch check: each top method's validation top-1 at its chosen setting after 12
    and after 30 epochs (the mix chosen on validation for two-branch methods), and the two
    rankings."""
    if not long:
        return "Not run yet (`python benchmarks/study_fmnist.py long`).\n"
    rows = ["| method | trial | val top-1, 12 epochs | val top-1, 30 epochs | change | wall s (30 epochs) |",
            "|---|---|---|---|---|---|"]
    def name(m):  # the "ce" method's best trial samples class-balanced: that is the CE + RS row
        n = METHOD_NAMES["ce_rs"] if m == "ce" and "_balanced_" in long["methods"][m]["trial"] else METHOD_NAMES.get(m, m)
        return n + " (added)" if long["methods"][m].get("added") else n

    for m in long["ranking_12"]:
        r = long["methods"][m]
        v30 = r.get("val_top1")
        rows.append(_row(name(m), _label(r["trial"]), f"{r['val_top1_12']:.2f}",
                         "not finished" if v30 is None else f"{v30:.2f}",
                         "" if v30 is None else f"{v30 - r['val_top1_12']:+.2f}",
                         "" if r.get("wall_time_s") is None else f"{r['wall_time_s']:.0f}"))
    rows += ["", f"Ranking after 12 epochs: {' > '.join(map(name, long['ranking_12']))}. "
                 f"After 30 epochs: {' > '.join(map(name, long['ranking_30']))}."]
    return "\n".join(rows) + "\n"


def render_tables_from_files(trials_file: Path = TRIALS_FILE, results: Path = ROOT / "results",
                             long_file: Path = LONG_FILE) -> dict[str, str]:
    tables = render_trial_tables(json.loads(Path(trials_file).read_text()))
    tables["final"] = render_final_table(final_records(load_results(results) if Path(results).is_dir() else []))
    tables["long"] = render_long_table(json.loads(Path(long_file).read_text()) if Path(long_file).is_file() else None)
    tables["geometry"] = render_geometry_table(json.loads(GEOMETRY_FILE.read_text()) if GEOMETRY_FILE.is_file() else None)
    tables["errors"] = render_errors_table(json.loads(ERRORS_FILE.read_text()) if ERRORS_FILE.is_file() else None)
    return tables


def update_trial_blocks(text: str, tables: dict[str, str]) -> str:
    """Replace the body of every ``<!-- trials:ID -->`` ... ``<!-- /trials -->`` block by the
    table ID; an unknown ID is an error."""
    try:
        return update_markdown(text, tables, tag=TAG, missing=None)
    except KeyError as e:
        raise SystemExit(e.args[0]) from None


def trial_blocks(text: str) -> list[str]:
    return markdown_blocks(text, tag=TAG)


def phase_render(args) -> int:
    tables = render_tables_from_files(Path(args.trials_file), Path(args.results))
    stale, seen = [], set()
    for path in DOCS:
        text = path.read_text()
        seen.update(trial_blocks(text))
        new = update_trial_blocks(text, tables)
        if new == text:
            print(f"{path.relative_to(ROOT)} is up to date")
        elif args.check:
            stale.append(path)
            print(f"{path.relative_to(ROOT)} is stale: run python benchmarks/study_fmnist.py render")
        else:
            path.write_text(new)
            print(f"updated {path.relative_to(ROOT)}")
    missing = sorted(set(tables) - seen)
    if missing:
        print(f"tables without a block in the docs: {', '.join(missing)} (add <!-- trials:ID --> ... <!-- /trials -->)")
    return 1 if args.check and (stale or missing) else 0


def _epochs_of(cfg_name: str) -> int:
    from allnc.config import load_config

    return int(load_config(cfg_name).train.epochs)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("phase", choices=["trials", "long", "final", "posthoc", "records", "geometry", "errors", "render"])
    p.add_argument("--out", default=str(ROOT / "runs" / "study"))
    p.add_argument("--results", default=str(ROOT / "results"))
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--seeds", type=int, default=3, help="final: seeds 0..N-1 at imbalance 100")
    p.add_argument("--other-ifs", type=int, nargs="*", default=[50, 10], help="final: the other imbalance factors")
    p.add_argument("--other-seeds", type=int, default=1, help="final: seeds 0..N-1 at the other imbalance factors")
    p.add_argument("--ablation-seeds", type=int, default=1, help="final: the AllNC ablation's seeds 0..N-1 (imbalance 100)")
    p.add_argument("--deadline", type=float, default=None, help="final, long: seconds after which running runs stop (resumable) and the rest do not start")
    p.add_argument("--cut", action="append", metavar="METHOD",
                   help="trials: do not run this method's unfinished trials (recorded as cut); repeatable")
    p.add_argument("--only", action="append", metavar="METHOD",
                   help="trials, long: run only this method's trials (its long run) again and replace its rows in the "
                        "trials (long) file; repeatable")
    p.add_argument("--add", action="store_true",
                   help="long --only M --add: M is not one of the phase's methods; run it and add its row (marked added)")
    p.add_argument("--why", default=None, help="--only: why the method runs again (kept in the file)")
    p.add_argument("--data-root", default=None, help="Fashion-MNIST IDX folder (default: Debian's place)")
    p.add_argument("--trials-file", default=str(TRIALS_FILE), help="render: the trials results file")
    p.add_argument("--check", action="store_true", help="render: change nothing, exit 1 if a doc is stale")
    args = p.parse_args(argv)
    if args.phase == "render":
        return phase_render(args)
    {"trials": phase_trials, "long": phase_long, "final": phase_final, "posthoc": phase_posthoc,
     "records": phase_records, "geometry": phase_geometry, "errors": phase_errors}[args.phase](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The ``allnc`` command line."""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

from .errors import AllncError, AllncWarning, ConfigError

EPILOG = "Bad input ends with a one-line message and exit status 2."


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def _print_result(m: dict) -> None:
    if m.get("val") is None and "top1" not in m:
        print("nothing evaluated (train.eval_test=false and no validation split)")
    for name, r in (("validation", m.get("val")), ("test", m if "top1" in m else None)):
        if r is None:
            continue
        g = r["groups"]
        ece = f"  ECE {_fmt(r['ece'])}" if "ece" in r else ""
        print(f"{name:<10} top-1 {r['top1']:.2f}  many {_fmt(g['many'])}  medium {_fmt(g['medium'])}  "
              f"few {_fmt(g['few'])}{ece}  (percent; '-' = empty group)")


def cmd_train(a) -> int:
    from .config import load_config
    from . import dist
    from .engine.trainer import Trainer

    if a.resume and not a.config:
        t = Trainer(None, a.out, resume=True, overwrite=a.overwrite, overrides=a.overrides)
    else:
        if not a.config:
            raise AllncError("allnc train needs --config NAME_OR_YAML (or --resume to continue a run)")
        cfg = load_config(a.config, a.overrides)
        t = Trainer(cfg, a.out, resume=a.resume, overwrite=a.overwrite)
    try:
        m = t.fit()
        if dist.is_main():
            _print_result(m)
            print(f"run directory: {t.out}")
    except KeyboardInterrupt:
        if t.last_ckpt_epoch:
            _say(f"allnc: interrupted; the checkpoint of epoch {t.last_ckpt_epoch} is kept: continue with "
                 f"`allnc train --out {t.out} --resume`")
        else:
            _say(f"allnc: interrupted before the first checkpoint; nothing to resume: start again with "
                 f"`allnc train --config ... --out {t.out} --overwrite`")
        return 130
    finally:
        dist.shutdown()
    return 0


def cmd_eval(a) -> int:
    from .engine.context import load_run
    from .engine.evaluate import evaluate_accuracy

    t = load_run(a.run_dir, device=a.device, overrides=a.overrides)
    res = evaluate_accuracy(t)
    print(f"{t.cfg.display_name or t.cfg.method.name} ({t.cfg.config_name or a.run_dir}) on {t.bundle.label}, "
          f"checkpoint of epoch {t.ckpt_epoch}:")
    _print_result(res)
    if a.json:
        print(json.dumps(res))
    return 0


def cmd_data(a) -> int:
    import numpy as np

    from .config import load_config
    from .data import build_data, groups

    cfg = load_config(a.config, a.overrides)
    b = build_data(cfg)
    counts = np.asarray(b.class_counts)
    g = groups(counts)
    print(f"{b.label}")
    print(f"train {len(b.train.targets)} images, test {len(b.test.targets)} images, {b.num_classes} classes")
    h, w = b.image_hw
    colour = "grey" if b.in_channels == 1 else "colour"
    print(f"images {colour}, decoded into memory at {w}x{h}" if b.small else
          f"images {colour}, read from disk, trained at {w}x{h} (data.image_size)")
    print("counts " + " ".join(str(int(c)) for c in counts))
    for name in ("many", "medium", "few"):
        ids = g[name]
        print(f"{name:<6} {len(ids):>4} classes" + (f": {' '.join(map(str, ids))}" if 0 < len(ids) <= 30 else ""))
    return 0


def cmd_nc(a) -> int:
    from .engine.context import load_run
    from .engine.evaluate import neural_collapse
    from .metrics import nc_summary, save_nc

    t = load_run(a.run_dir, device=a.device, overrides=a.overrides)
    nc, mats = neural_collapse(t, max_samples=a.max_samples, log=lambda line: print(line, file=sys.stderr, flush=True))
    for split in nc:
        nc[split]["info"]["checkpoint_epoch"] = t.ckpt_epoch
    path = save_nc(a.run_dir, nc, mats)
    from .report.runreport import group_text_lines

    names = getattr(t.bundle, "classes", None)
    names = list(names) if names is not None and len(names) == t.bundle.num_classes else None
    for split in ("train", "test"):
        s = nc_summary(nc[split])
        print(f"{split:<5} " + "  ".join(f"{k} {v:.4g}" for k, v in s.items()
                                          if v is not None and not k.startswith(("many_", "few_", "w_norm_ratio",
                                                                                 "means_norm_ratio"))))
        print(f"{split:<5} minority collapse by group (groups from the training counts):")
        print("\n".join(group_text_lines(nc[split], names, indent="      ")))
    print(f"wrote {path} and nc.npz")
    return 0


def cmd_posthoc(a) -> int:
    from .engine.posthoc import posthoc
    from .rundir import POSTHOC

    r = posthoc(a.run_dir, a.method, device=a.device, val_per_class=a.val_per_class, overrides=a.overrides,
                val_list=a.val_list)
    print(f"{r['data']}, checkpoint of epoch {r['checkpoint_epoch']}: {r['row']}")
    v = r["validation"]
    print(f"validation {v['source']}" + (f", {v['per_class']}/class" if v.get("per_class") else ""))
    p = r.get("parameter", "tau")
    print(f"val top-1 by {p}: " + "  ".join(f"{t} {v:.2f}" for t, v in r["val_top1_by_tau"].items()))
    tie = "the smaller tau" if p == "tau" else "the a nearest 0.5"
    print(f"chosen {p} {r['tau']:g} (best validation top-1 {r['val_top1']:.2f}; ties go to {tie})")
    for name, m in (("run", r["run_test"]), (f"{p}={r['tau']:g}", r["test"])):
        if m is not None:
            g = m["groups"] or {}
            print(f"test {name:<9} top-1 {m['top1']:.2f}  many {_fmt(g.get('many'))}  medium {_fmt(g.get('medium'))}  "
                  f"few {_fmt(g.get('few'))}")
    for n in r["notes"]:
        print(f"note: {n}")
    print(f"wrote {Path(a.run_dir) / POSTHOC.format(method=r['method'])}")
    return 0


def cmd_report(a) -> int:
    from .report import write_report

    path = write_report(a.run_dir)
    print(f"wrote {path}")
    return 0


def cmd_compare(a) -> int:
    from .report import compare_runs

    path = compare_runs(a.run_dirs, a.out)
    print(Path(path).read_text() if Path(path).suffix == ".md" else f"wrote {path}")
    return 0


def cmd_grid(a) -> int:
    if a.executor == "process":
        from .grid import run_grid

        res = run_grid(a.grid, dry_run=a.dry_run)
    else:
        from .grid.submit import submit_grid

        res = submit_grid(a.grid, executor=a.executor, dry_run=a.dry_run)
    failed = getattr(res, "failed", [])
    return 1 if failed else 0


def cmd_predict(a) -> int:
    from .engine.predict import predict_to_files

    res = predict_to_files(a.source, a.input, a.out, topk=a.topk, batch_size=a.batch_size, device=a.device)
    print(f"{res['rows']} images -> {res['csv']}")
    r = res["accuracy"]
    if r is not None:
        g = r["groups"]
        print(f"labelled {r['num_samples']}: top-1 {r['top1']:.2f}  many {_fmt(g['many'])}  "
              f"medium {_fmt(g['medium'])}  few {_fmt(g['few'])}  (percent; groups from the training counts) "
              f"-> {res['json']}")
    return 0


def cmd_export(a) -> int:
    from .engine.predict import export_run

    out = export_run(a.run_dir, a.out_dir, overwrite=a.overwrite)
    print(f"wrote {out}/model.safetensors and {out}/model.json")
    return 0


def cmd_config(a) -> int:
    from .config import builtin_names, load_config, to_yaml

    if a.name and "=" in a.name:  # an override, not a config name (argparse cannot tell)
        a.name, a.overrides = None, [a.name, *a.overrides]
    # --keys lists the tree, which plugins extend: plugins=... is the one override it takes
    plugins = [o for o in a.overrides if o.split("=", 1)[0].strip() == "plugins"] if a.keys else []
    if (a.keys or a.list) and (a.name or len(a.overrides) > len(plugins)):
        flag = "--keys" if a.keys else "--list"
        took = " (but plugins=...)" if a.keys else ""
        raise ConfigError(f"{flag} covers every config, so it takes no config name or override{took} "
                          f"(got {' '.join([a.name or '', *a.overrides]).strip()}); drop them, or drop {flag}")
    if a.keys:
        from .config import import_plugins_named, key_docs

        import_plugins_named(plugins)
        for key, default, meaning in key_docs():
            print(f"{key} = {json.dumps(default)}" + (f"    # {meaning}" if meaning else ""))
        return 0
    if a.list or not (a.name or a.overrides):
        from .compose import describe

        names = builtin_names()
        width = max(len(n) for n in names)
        for n in names:
            print(f"{n:<{width}}  {describe(n)}")
        print(f"({len(names)} configs: <dataset>[_<method>[_<preset>]]; `allnc config NAME` prints one, "
              "`allnc config --keys` every key)")
        return 0
    print(to_yaml(load_config(a.name, a.overrides)), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="allnc", description="Long-tailed image classification with All-around Neural "
                                "Collapse, strong baselines and neural-collapse diagnostics.", epilog=EPILOG)
    sub = p.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("train", help="train a method", epilog="example: allnc train --config fmnist_lt_allnc "
                       "--out runs/a train.epochs=5")
    t.add_argument("--config", help="built-in config name (see `allnc config --list`) or a YAML file")
    t.add_argument("--out", required=True, help="run directory")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    t.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    t.add_argument("overrides", nargs="*", default=[], help="key=value config overrides")
    t.set_defaults(fn=cmd_train)

    e = sub.add_parser("eval", help="re-evaluate a run's last checkpoint on the test set")
    e.add_argument("run_dir")
    e.add_argument("--device", default="auto")
    e.add_argument("--json", action="store_true", help="also print the full result as JSON")
    e.add_argument("overrides", nargs="*", default=[], help="runtime key=value, e.g. data.root=DIR where the data moved")
    e.set_defaults(fn=cmd_eval)

    d = sub.add_parser("data", help="print class counts and many/medium/few groups without training")
    d.add_argument("--config", required=True)
    d.add_argument("overrides", nargs="*", default=[])
    d.set_defaults(fn=cmd_data)

    n = sub.add_parser("nc", help="neural-collapse metrics of a run's last checkpoint -> RUN_DIR/nc.json")
    n.add_argument("run_dir")
    n.add_argument("--device", default="auto")
    n.add_argument("--max-samples", type=int, default=0, help="at most this many samples per split (0 = all)")
    n.add_argument("overrides", nargs="*", default=[], help="runtime key=value, e.g. data.root=DIR where the data moved")
    n.set_defaults(fn=cmd_nc)

    ph = sub.add_parser("posthoc", help="tau-norm or post-hoc logit adjustment of a run, or the inference mix of a "
                        "two-branch run, chosen on a balanced validation split -> RUN_DIR/posthoc_<method>.json")
    ph.add_argument("run_dir")
    ph.add_argument("--method", required=True, help="tau_norm | logit_adjust | inference_mix (gbbn runs: BBN, AllNC)")
    ph.add_argument("--device", default="auto")
    ph.add_argument("--val-per-class", type=int, default=None,
                    help="images per class of the validation split drawn when the run has none (default 20)")
    ph.add_argument("--val-list", default=None, metavar="FILE",
                    help="list-file runs without a validation split: a 'relative/path label' list (relative to "
                         "data.root) to choose tau on")
    ph.add_argument("overrides", nargs="*", default=[], help="runtime key=value, e.g. data.root=DIR where the data moved")
    ph.set_defaults(fn=cmd_posthoc)

    r = sub.add_parser("report", help="pictures and report.md of a run -> RUN_DIR/report/")
    r.add_argument("run_dir")
    r.set_defaults(fn=cmd_report)

    c = sub.add_parser("compare", help="several runs side by side (table and overlaid curves)")
    c.add_argument("run_dirs", nargs="+")
    c.add_argument("--out", default="compare", help="output folder")
    c.set_defaults(fn=cmd_compare)

    g = sub.add_parser("grid", help="run a grid of configs x overrides x seeds as concurrent processes")
    g.add_argument("grid", help="grid YAML")
    g.add_argument("--dry-run", action="store_true", help="list the runs without starting them")
    g.add_argument("--executor", choices=("process", "slurm", "local"), default="process",
                   help="process: concurrent processes here (default); slurm: one Slurm job per run through "
                   "submitit (options from the grid's slurm:); local: submitit's local executor "
                   "(pip install allnc[submitit])")
    g.set_defaults(fn=cmd_grid)

    pr = sub.add_parser("predict", help="classify images with a run or an export -> CSV (+ accuracy JSON)",
                        epilog="example: allnc predict runs/a photos/ --out predictions.csv --topk 3")
    pr.add_argument("source", metavar="RUN_DIR", help="run directory or `allnc export` folder")
    pr.add_argument("input", metavar="INPUT", help="image folder (class sub-folders give labels), "
                    "'relative/path label' list file, or one image")
    pr.add_argument("--out", default="predictions.csv", help="CSV file (a folder: FOLDER/predictions.csv); accuracy goes beside it as .json")
    pr.add_argument("--topk", type=int, default=5)
    pr.add_argument("--batch-size", type=int, default=256)
    pr.add_argument("--device", default="auto")
    pr.set_defaults(fn=cmd_predict)

    x = sub.add_parser("export", help="a run's model as model.safetensors + model.json (loads without pickle)")
    x.add_argument("run_dir")
    x.add_argument("out_dir", help="a new or empty folder (never a run directory)")
    x.add_argument("--overwrite", action="store_true", help="replace an earlier export in OUT_DIR")
    x.set_defaults(fn=cmd_export)

    s = sub.add_parser("config", help="list built-in configs, or print a resolved config")
    s.add_argument("name", nargs="?")
    s.add_argument("--list", action="store_true", help="every built-in config with one line on what it is")
    s.add_argument("--keys", action="store_true", help="every config key with its default and meaning")
    s.add_argument("overrides", nargs="*", default=[])
    s.set_defaults(fn=cmd_config)
    return p


def _say(text: str) -> None:
    """One line on stderr in one write, so that the lines of torchrun's processes never run into
    each other; under torchrun it names its rank."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    rank = f"[rank {os.environ.get('RANK', '?')}] " if world > 1 else ""
    sys.stderr.write(text.replace("allnc: ", f"allnc: {rank}", 1) + "\n")
    sys.stderr.flush()


def main(argv=None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value overrides may also come after the options
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        with warnings.catch_warnings():  # restores the warning machinery when the command ends
            shown = warnings.showwarning

            def show(message, category, filename, lineno, file=None, line=None):
                if issubclass(category, AllncWarning):
                    _say(f"allnc: note: {message}")
                else:
                    shown(message, category, filename, lineno, file, line)

            warnings.showwarning = show
            return args.fn(args)
    except AllncError as e:
        _say(f"allnc: error: {e}")
        return 2
    except BrokenPipeError:  # the reader went away (`allnc config --keys | head`): nothing more to say
        sys.stdout = open(os.devnull, "w")  # the interpreter's last flush must not fail again
        return 0
    except OSError as e:  # a file the command had to read or write
        from .rundir import describe_os_error

        doing = "the file operation on" if getattr(e, "filename", None) else "a file operation"
        _say(f"allnc: error: {describe_os_error(e, doing)}")
        return 2
    except KeyboardInterrupt:
        _say("allnc: interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())

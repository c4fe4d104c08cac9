"""Comparison of several runs: markdown tables and overlaid curves.

``compare_runs(run_dirs, out_dir)`` reads each run's metrics.json, metrics.jsonl and nc.json
(any may be missing; its cells are "–") and writes OUT_DIR/compare.md and
OUT_DIR/compare_curves.png.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from .. import rundir
from ..errors import RunDirError
from ..metrics.accuracy import FEW_BELOW, GROUP_NAMES, MANY_ABOVE, headward_errors
from . import plots
from .runreport import (
    EMPTY_GROUP,
    GROUP_COLUMNS,
    GROUP_NOTE,
    GROUP_RULE,
    _acc_cells,
    fmt,
    fmt_pct,
    group_pair_figures,
    group_size,
    group_sizes_of,
    nc_groups,
    nonempty_groups,
    read_json,
    read_jsonl,
    run_label,
    train_counts_of,
)

# NC columns of the table: (header, summary key), from the TRAINING split of nc.json;
# the many/medium/few figures have their own table
NC_COLUMNS = [
    ("NC1 cb", "nc1_cb"),
    ("NC2 angle W", "nc2_equiangular_w"),
    ("NC2 angle means cb", "nc2_equiangular_means_cb"),
    ("NC3 cb", "nc3_cb"),
    ("NC4", "nc4"),
]


def _names(run_dirs: Sequence[Path]) -> list[str]:
    """Directory names, lengthened with parents until they are unique."""
    depth = 1
    while True:
        names = ["/".join(p.resolve().parts[-depth:]) for p in run_dirs]
        if len(set(names)) == len(names) or depth > 8:
            return names
        depth += 1


def _group_rows(name: str, nc: Mapping) -> tuple[list[str], list[str]]:
    """(table rows of one run's non-empty groups, lines naming its empty groups) from the
    training split of nc.json."""
    gb = nc_groups(nc.get("train")) if isinstance(nc, Mapping) else None
    if gb is None:
        return [], [f"- **{name}**: " + ("no nc.json (`allnc nc RUN_DIR` makes it)" if not nc
                                          else "nc.json has no many/medium/few figures") + "."]
    rows = []
    for g in nonempty_groups(gb):
        e = gb[g]
        rows.append(f"| {name} | {g} | {group_size(gb, g)} | "
                    + " | ".join(fmt(e.get(k)) for _, k in GROUP_COLUMNS) + " |")
    lines = [f"- **{name}**, {g}: {EMPTY_GROUP} (no class has {GROUP_RULE[g]} training samples)."
             for g in GROUP_NAMES if group_size(gb, g) == 0]
    pairs = group_pair_figures(gb)
    if pairs:
        lines.append(f"- **{name}**, between groups: " + "; ".join(f"{lab} {fmt(v)}" for lab, v in pairs) + ".")
    return rows, lines


def compare_runs(run_dirs: Sequence, out_dir) -> Path:
    """Write OUT_DIR/compare.md (and compare_curves.png) comparing the given runs.

    First table: top-1, many/medium/few accuracy (test set, last epoch; an empty group says
    so) and key NC figures of the training features (class-balanced where it matters, see
    docs/metrics.md); then, when runs have a validation split, their validation accuracy.
    Next table: the minority-collapse figures of every non-empty group
    of every run (nc.json, training features), then each run's empty groups and the ratios
    and cross-group cosines between its non-empty groups. Returns the path of compare.md.
    """
    dirs = [Path(d) for d in run_dirs]
    if not dirs:
        raise RunDirError("compare: give at least one run directory")
    seen: dict[Path, Path] = {}
    for d in dirs:
        if not d.is_dir():
            raise RunDirError(f"run directory {d} does not exist")
        if d.resolve() in seen:
            raise RunDirError(f"compare: {d} is given twice (as {seen[d.resolve()]} too); give each run once")
        seen[d.resolve()] = d
    out = Path(out_dir)
    if rundir.holds_run(out):
        raise RunDirError(f"compare: --out {out} is a run directory; write the comparison elsewhere "
                          "(for example --out cmp)")
    out.mkdir(parents=True, exist_ok=True)
    names = _names(dirs)

    md = ["# Comparison of runs", "",
          f"Accuracy: test set, last epoch, percent; groups from the training counts "
          f"(many > {MANY_ABOVE}, medium {FEW_BELOW}-{MANY_ABOVE}, few < {FEW_BELOW} samples). NC figures: "
          f"training features of the final model (nc.json, made by `allnc nc RUN_DIR`); "
          f"cb = class-balanced. – = not available.", ""]
    header = ["run", "top-1", "many", "medium", "few"] + [h for h, _ in NC_COLUMNS]
    md += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    labels, group_rows, group_lines, val_rows, error_rows, cal_rows = [], [], [], [], [], []
    curves, sizes_by_run = {}, {}
    for name, d in zip(names, dirs):
        metrics = read_json(d / "metrics.json") or {}
        records, _ = read_jsonl(d / "metrics.jsonl")
        nc = read_json(d / "nc.json") or {}
        tc = train_counts_of(metrics, nc)
        sizes = group_sizes_of(metrics, nc, tc)
        summ = plots.flat_nc(nc) if nc else {}
        if metrics.get("test_evaluated", True) is False and metrics.get("top1") is None:
            row = [name, "not evaluated (train.eval_test=false)", "–", "–", "–"]
        else:
            row = [name] + _acc_cells(metrics, sizes)
        if isinstance(metrics.get("val"), Mapping):
            val_rows.append("| " + " | ".join([name] + _acc_cells(metrics["val"], sizes)) + " |")
        row += [fmt(summ.get(k)) for _, k in NC_COLUMNS]
        md.append("| " + " | ".join(row) + " |")
        if metrics.get("confusion") is not None and tc is not None and metrics.get("test_evaluated", True):
            hw = headward_errors(metrics["confusion"], tc)
            error_rows.append("| " + " | ".join([name, str(hw["errors"]), fmt_pct(hw["all"]), fmt_pct(hw["uniform"])]
                                                + [fmt_pct(hw["groups"][g]) for g in GROUP_NAMES]) + " |")
        if metrics.get("ece") is not None and metrics.get("test_evaluated", True):
            val_ece = (metrics.get("val") or {}).get("ece") if isinstance(metrics.get("val"), Mapping) else None
            cal_rows.append(f"| {name} | {fmt_pct(metrics['ece'])} | {fmt_pct(val_ece)} |")
        rows, lines = _group_rows(name, nc)
        group_rows += rows
        group_lines += lines
        lab = run_label(metrics.get("config"))
        labels.append(f"- **{name}**: {lab or 'no config in metrics.json'} ({d})")
        if records:
            curves[name] = records
            sizes_by_run[name] = sizes
    if val_rows:
        md += ["", "## Validation split", "",
               "Accuracy on each run's validation split (`data.val_per_class` images per class, drawn from "
               "the training images the long tail leaves out), percent, same model as the test row:", "",
               "| run | top-1 | many | medium | few |", "|---|---|---|---|---|"] + val_rows
    if error_rows:
        md += ["", "## Where the errors go (test)", "",
               "Of each run's misclassified test images, the percentage predicted as a class with more training "
               "images than their own (head-ward), beside that share were each class's errors spread evenly "
               "over the other classes, and by true group (`allnc report RUN_DIR` draws them):", "",
               "| run | errors | head-ward | if spread evenly | " + " | ".join(f"head-ward, {g}" for g in GROUP_NAMES) + " |",
               "|---|---|---|---|" + "---|" * len(GROUP_NAMES)] + error_rows
    if cal_rows:
        md += ["", "## Calibration", "",
               "Expected calibration error (15 confidence bins, percent; 0 = calibrated) of the test set and the "
               "validation split (`allnc report RUN_DIR` draws the reliability diagram):", "",
               "| run | ECE test | ECE validation |", "|---|---|---|"] + cal_rows
    md += ["", "## Minority collapse by group (training features)", ""]
    if group_rows:
        md += ["| run | group | classes | " + " | ".join(h for h, _ in GROUP_COLUMNS) + " |",
               "|---|---|---|" + "---|" * len(GROUP_COLUMNS)] + group_rows + [""]
    md += group_lines + ["", GROUP_NOTE, ""]
    md += ["## Runs", ""] + labels + [""]
    p = plots.plot_overlaid_curves(curves, out / "compare_curves.png", group_sizes=sizes_by_run) if curves else None
    if p:
        md += ["Top-1 and group accuracies (test solid, validation dashed) and the NC figures "
               "logged during training, one colour per run:", "",
               "![accuracy and NC metrics over epochs](compare_curves.png)", ""]
    else:
        md += ["- no metrics.jsonl with test_top1 or nc entries: no curves.", ""]
    path = out / "compare.md"
    rundir.atomic_write_text(path, "\n".join(md).rstrip() + "\n")
    return path

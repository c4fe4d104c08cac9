"""Comparison of several runs: a markdown table and overlaid curves.

``compare_runs(run_dirs, out_dir)`` reads each run's metrics.json, metrics.jsonl and nc.json
(any may be missing; its cells are "–") and writes OUT_DIR/compare.md and
OUT_DIR/compare_curves.png.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .. import rundir
from ..errors import RunDirError
from . import plots
from .runreport import fmt, fmt_pct, read_json, read_jsonl, run_label

# NC columns of the table: (header, summary key), from the TRAINING split of nc.json
NC_COLUMNS = [
    ("NC1 cb", "nc1_cb"),
    ("NC2 angle W", "nc2_equiangular_w"),
    ("NC2 angle means cb", "nc2_equiangular_means_cb"),
    ("NC3 cb", "nc3_cb"),
    ("NC4", "nc4"),
    ("cos W few", "few_w_cos"),
    ("cos means few", "few_means_cos"),
    ("‖w‖ many/few", "w_norm_ratio_many_few"),
]


def _names(run_dirs: Sequence[Path]) -> list[str]:
    """Directory names, lengthened with parents until they are unique."""
    depth = 1
    while True:
        names = ["/".join(p.resolve().parts[-depth:]) for p in run_dirs]
        if len(set(names)) == len(names) or depth > 8:
            return names
        depth += 1


def compare_runs(run_dirs: Sequence, out_dir) -> Path:
    """Write OUT_DIR/compare.md (and compare_curves.png) comparing the given runs.

    Table columns: top-1, many/medium/few accuracy (test set, last epoch) and key NC
    figures of the training features (class-balanced where it matters, see docs/metrics.md).
    Returns the path of compare.md.
    """
    dirs = [Path(d) for d in run_dirs]
    if not dirs:
        raise RunDirError("compare: give at least one run directory")
    for d in dirs:
        if not d.is_dir():
            raise RunDirError(f"run directory {d} does not exist")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = _names(dirs)

    md = ["# Comparison of runs", "",
          "Accuracy: test set, last epoch, percent; groups from the training counts "
          "(many > 100, medium 20-100, few < 20). NC figures: training features of the final "
          "model (nc.json, made by `allnc nc RUN_DIR`); cb = class-balanced. – = not available.", ""]
    header = ["run", "top-1", "many", "medium", "few"] + [h for h, _ in NC_COLUMNS]
    md += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    labels = []
    curves = {}
    for name, d in zip(names, dirs):
        metrics = read_json(d / "metrics.json") or {}
        records, _ = read_jsonl(d / "metrics.jsonl")
        nc = read_json(d / "nc.json") or {}
        groups = metrics.get("groups") or {}
        summ = plots.flat_nc(nc) if nc else {}
        row = [name, fmt_pct(metrics.get("top1"))] + [fmt_pct(groups.get(g)) for g in ("many", "medium", "few")]
        row += [fmt(summ.get(k)) for _, k in NC_COLUMNS]
        md.append("| " + " | ".join(row) + " |")
        lab = run_label(metrics.get("config"))
        labels.append(f"- **{name}**: {lab or 'no config in metrics.json'} ({d})")
        if records:
            curves[name] = records
    md += ["", "Runs:", ""] + labels + [""]
    p = plots.plot_overlaid_curves(curves, out / "compare_curves.png") if curves else None
    if p:
        md += ["![test top-1 and NC metrics over epochs](compare_curves.png)", ""]
    else:
        md += ["- no metrics.jsonl with test_top1 or nc entries: no curves.", ""]
    path = out / "compare.md"
    rundir.atomic_write_text(path, "\n".join(md).rstrip() + "\n")
    return path

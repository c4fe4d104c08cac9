"""The report of one run: RUN_DIR/report/report.md with its PNG figures.

Inputs (each optional; a missing one is skipped with a line naming the command that makes it):

* RUN_DIR/metrics.json  -- final evaluation: top1, groups, per_class, class_counts, config
* RUN_DIR/metrics.jsonl -- one JSON object per epoch: epoch, loss, lr, optional test_top1, nc
* RUN_DIR/nc.json       -- {"train": compute_nc(...), "test": compute_nc(...)}
* RUN_DIR/nc.npz        -- "<split>_means_cos", "<split>_w_cos", "<split>_cross_cos"
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from .. import rundir
from ..errors import RunDirError
from . import plots

# rows of the NC table: (label, summary key)
NC_TABLE_ROWS = [
    ("NC1 sample-weighted  Tr(Sw Sb+)/K", "nc1"),
    ("NC1 class-balanced", "nc1_cb"),
    ("NC2 equinorm, centred means (cb)", "nc2_equinorm_means_cb"),
    ("NC2 equinorm, W", "nc2_equinorm_w"),
    ("NC2 equiangularity, centred means (cb)", "nc2_equiangular_means_cb"),
    ("NC2 equiangularity, W", "nc2_equiangular_w"),
    ("NC2 Gram distance, centred means (cb)", "nc2_gram_means_cb"),
    ("NC2 Gram distance, W", "nc2_gram_w"),
    ("NC3 self-duality (sample-weighted)", "nc3"),
    ("NC3 self-duality (class-balanced)", "nc3_cb"),
    ("NC4 classifier vs nearest class mean", "nc4"),
    ("mean cos of W, many group", "many_w_cos"),
    ("mean cos of W, few group", "few_w_cos"),
    ("mean cos of centred means, many group", "many_means_cos"),
    ("mean cos of centred means, few group", "few_means_cos"),
    ("NC1 inside the few group (cb)", "few_nc1_cb"),
    ("mean ‖w‖ many / few", "w_norm_ratio_many_few"),
    ("mean ‖mu − mu_G‖ many / few", "means_norm_ratio_many_few"),
]


def fmt(v: Any, digits: int = 3) -> str:
    """A table cell: 3 significant digits, "–" for missing / not finite."""
    if v is None or isinstance(v, bool):
        return "–" if v is None else str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.{digits}g}" if math.isfinite(v) else "–"
    return str(v)


def fmt_pct(v: Any) -> str:
    return "–" if v is None else f"{float(v):.2f}"


def read_json(path: Path) -> Optional[Any]:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise RunDirError(f"{path} is not valid JSON ({e}); delete it or re-create it") from None


def read_jsonl(path: Path) -> tuple[list[dict], int]:
    """(records, number of unreadable lines). A partial last line (a run in progress) is skipped."""
    if not path.is_file():
        return [], 0
    recs, bad = [], 0
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(r, dict):
            recs.append(r)
        else:
            bad += 1
    return recs, bad


def read_npz(path: Path) -> Optional[dict[str, np.ndarray]]:
    if not path.is_file():
        return None
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def run_label(config: Optional[Mapping]) -> str:
    """A short human label of a run's config (method, data, imbalance, model, epochs, augmentation)."""
    if not isinstance(config, Mapping):
        return ""

    def g(*path):
        v: Any = config
        for p in path:
            v = v.get(p) if isinstance(v, Mapping) else None
        return v

    parts = []
    if g("name"):
        parts.append(str(g("name")))
    if g("method", "name"):
        parts.append(f"method {g('method', 'name')}")
    if g("data", "name"):
        s = f"{g('data', 'name')}"
        if g("data", "imbalance_factor") is not None:
            s += f" IF {fmt(g('data', 'imbalance_factor'))}"
        parts.append(s)
    if g("model", "name"):
        parts.append(f"{g('model', 'name')}" + (f" w{g('model', 'width')}" if g("model", "width") else ""))
    if g("train", "epochs") is not None:
        parts.append(f"{g('train', 'epochs')} epochs")
    if g("data", "augment"):
        parts.append(f"augment {g('data', 'augment')}")
    return ", ".join(parts)


def train_counts_of(metrics: Optional[Mapping], nc: Optional[Mapping]) -> Optional[list[int]]:
    if isinstance(metrics, Mapping) and metrics.get("class_counts") is not None:
        return [int(x) for x in metrics["class_counts"]]
    if isinstance(nc, Mapping):
        for split in ("train", "test"):
            pc = (nc.get(split) or {}).get("per_class") or {}
            if pc.get("train_count") is not None:
                return [int(x) for x in pc["train_count"]]
    return None


def _rel(p: Optional[Path], base: Path) -> Optional[str]:
    return None if p is None else p.relative_to(base).as_posix()


def write_report(run_dir) -> Path:
    """Write RUN_DIR/report/report.md and its PNGs from what the run directory holds.

    Returns the path of report.md. Raises :class:`RunDirError` when RUN_DIR is not a
    directory or holds none of the inputs.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} does not exist")
    out = run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    metrics = read_json(run_dir / "metrics.json")
    records, bad_lines = read_jsonl(run_dir / "metrics.jsonl")
    nc = read_json(run_dir / "nc.json")
    mats = read_npz(run_dir / "nc.npz")
    if metrics is None and not records and nc is None:
        raise RunDirError(f"{run_dir} holds no metrics.json, metrics.jsonl or nc.json: "
                          f"is it a run directory? (train with `allnc train`)")
    tc = train_counts_of(metrics, nc)
    config = metrics.get("config") if isinstance(metrics, Mapping) else None

    md: list[str] = [f"# Run report: {run_dir.name}", ""]
    label = run_label(config)
    if label:
        md += [f"Run: {label}", ""]

    # ---- accuracy
    md += ["## Accuracy (last epoch, test set)", ""]
    if metrics is not None:
        groups = metrics.get("groups") or {}
        sizes = metrics.get("group_sizes") or {}
        md += ["| top-1 | many | medium | few |", "|---|---|---|---|"]
        cells = [fmt_pct(metrics.get("top1"))]
        for gname in ("many", "medium", "few"):
            n = sizes.get(gname)
            cells.append(fmt_pct(groups.get(gname)) + (f" ({n} classes)" if n is not None else ""))
        md += ["| " + " | ".join(cells) + " |", ""]
        md.append("Group accuracy = mean of the per-class accuracies; groups from the training "
                  "counts (many > 100, medium 20-100, few < 20); – = empty group.")
        md.append("")
        p = None
        if metrics.get("per_class") is not None and tc is not None:
            p = plots.plot_per_class_accuracy(metrics["per_class"], tc, out / "per_class_acc.png")
        if p:
            md += [f"![per-class accuracy]({_rel(p, out)})", ""]
    else:
        md.append(f"- metrics.json not found: it is written at the end of training, or by "
                  f"`allnc eval {run_dir}`.")
        md.append("")

    # ---- training curves
    md += ["## Training", ""]
    if records:
        p = plots.plot_training_curves(records, out / "curves.png")
        if p:
            md += [f"![training curves]({_rel(p, out)})", ""]
        if bad_lines:
            md += [f"({bad_lines} unreadable line(s) of metrics.jsonl skipped.)", ""]
        p = plots.plot_nc_over_epochs(records, out / "nc_epochs.png")
        if p:
            md += ["Neural collapse tracked during training (training features):", "",
                   f"![NC over epochs]({_rel(p, out)})", ""]
        else:
            md += ["- no NC tracking in metrics.jsonl: train with `nc.every=N` to log NC metrics "
                   "every N epochs.", ""]
    else:
        md += ["- metrics.jsonl not found: it is written during training (`allnc train`).", ""]

    # ---- neural collapse
    md += ["## Neural collapse (final model)", ""]
    if nc is not None:
        splits = [s for s in ("train", "test") if isinstance(nc.get(s), Mapping)]
        splits += [s for s in nc if s not in splits and isinstance(nc[s], Mapping) and "sample_weighted" in nc[s]]
        summ = {s: plots.flat_nc(nc[s]) for s in splits}
        md += ["| figure | " + " | ".join(splits) + " |", "|---|" + "---|" * len(splits)]
        for lab, key in NC_TABLE_ROWS:
            if any(summ[s].get(key) is not None for s in splits):
                md.append(f"| {lab} | " + " | ".join(fmt(summ[s].get(key)) for s in splits) + " |")
        md += ["", "Definitions and sources: docs/metrics.md. cb = class-balanced "
                   "(mu_G = mean of class means, Sigma_W averaged per class).", ""]
        for s in splits:
            for n in (nc[s].get("info") or {}).get("notes") or []:
                md.append(f"- note ({s}): {n}")
        md.append("")
        if mats is None:
            md += [f"- nc.npz not found: the cosine heat maps are made by `allnc nc {run_dir}`.", ""]
        else:
            prefixes = sorted({k.rsplit("_", 2)[0] for k in mats if k.endswith("_cos")},
                              key=lambda x: (x != "train", x != "test", x))
            for s in prefixes:
                m = {k: mats.get(f"{s}_{k}") for k in ("means_cos", "w_cos", "cross_cos")}
                K = next(v for v in m.values() if v is not None).shape[0]
                counts = tc if tc is not None and len(tc) == K else [1] * K
                p = plots.plot_cosine_heatmaps(m, counts, out / f"cos_{s}.png",
                                               title=f"Cosines, {s} features (classes by training size; "
                                                     f"lines: many | medium | few)")
                if p:
                    md += [f"![cosine heat maps, {s}]({_rel(p, out)})", ""]
        if splits:
            s = splits[0]  # the training split when there is one: the one that matters for collapse
            p = plots.plot_norms_vs_size(nc[s].get("per_class") or {}, out / f"norms_{s}.png", train_counts=tc,
                                         title=f"Per-class norms against class size ({s} features)")
            if p:
                md += [f"![norms, {s}]({_rel(p, out)})", ""]
    else:
        md += [f"- nc.json not found: the neural-collapse figures, cosine heat maps and norm plots "
               f"are made by `allnc nc {run_dir}`.", ""]

    path = out / "report.md"
    rundir.atomic_write_text(path, "\n".join(md).rstrip() + "\n")
    return path

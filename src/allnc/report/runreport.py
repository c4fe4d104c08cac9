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
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from .. import rundir
from ..errors import RunDirError
from ..metrics.accuracy import FEW_BELOW, GROUP_NAMES, MANY_ABOVE, group_confusion, group_of, headward_errors
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
]  # the many/medium/few figures have their own tables (``group_markdown``)


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
    """A short human label of a run's config: its display and config names, then method, data,
    imbalance, model (width, and the stem's stride where it is not 1), epochs, augmentation."""
    if not isinstance(config, Mapping):
        return ""

    def g(*path):
        v: Any = config
        for p in path:
            v = v.get(p) if isinstance(v, Mapping) else None
        return v

    parts = []
    if g("display_name"):
        parts.append(str(g("display_name")))
    if g("config_name"):
        parts.append(f"config {g('config_name')}")
    if g("name"):
        parts.append(str(g("name")))
    if g("method", "name"):
        parts.append(f"method {g('method', 'name')}")
    if g("data", "name"):
        s = f"{g('data', 'name')}"
        if g("data", "name") == "listfile":  # long-tailed as listed: data.imbalance_factor is ignored
            s += " (as listed)"
        elif g("data", "imbalance_factor") is not None:
            s += f" IF {fmt(g('data', 'imbalance_factor'))}"
        parts.append(s)
    if g("model", "name"):
        stride = g("model", "stem_stride")
        parts.append(f"{g('model', 'name')}" + (f" w{g('model', 'width')}" if g("model", "width") else "")
                     + (f" stem stride {stride}" if stride not in (None, 1) else ""))
    if g("train", "epochs") is not None:
        parts.append(f"{g('train', 'epochs')} epochs")
    if g("data", "augment"):
        parts.append(f"augment {g('data', 'augment')}")
    return ", ".join(parts)


# ------------------------------------------------------------------ groups and class names
EMPTY_GROUP = "no class in this group"
GROUP_RULE = {"many": f"more than {MANY_ABOVE}", "medium": f"{FEW_BELOW} to {MANY_ABOVE}",
              "few": f"fewer than {FEW_BELOW}"}

# columns of the per-group (minority-collapse) tables: (header, key of a "groups" entry)
GROUP_COLUMNS = [
    ("mean cos of w_c", "w_cos_mean"),
    ("mean cos of mu_c − mu_G", "means_cos_mean"),
    ("mean ‖w_c‖", "w_norm_mean"),
    ("mean ‖mu_c − mu_G‖", "means_norm_mean"),
    ("self-duality cos(w_c, mu_c − mu_G)", "self_duality_cos_mean"),
    ("NC1 in group (cb)", "nc1_class_balanced"),
    ("NC4 in group", "nc4"),
]
GROUP_PAIRS = (("many", "medium"), ("many", "few"), ("medium", "few"))
GROUP_NOTE = ("Groups from the training counts; cosines are the mean over pairs of distinct "
              "classes of the group (→ 1: minority collapse; −1/(K−1) for a simplex ETF); "
              "‖·‖ are group means of the per-class norms; – = not defined (a group of one "
              "class has no pair, NC1 needs 2 classes) or not measured.")


def nc_groups(nc_split: Optional[Mapping]) -> Optional[Mapping]:
    """The ``groups`` block of one split of nc.json, or None."""
    g = nc_split.get("groups") if isinstance(nc_split, Mapping) else None
    return g if isinstance(g, Mapping) else None


def group_size(gb: Optional[Mapping], g: str) -> Optional[int]:
    """Number of classes of group g (from the training counts), None when unknown."""
    e = gb.get(g) if isinstance(gb, Mapping) else None
    n = e.get("num_classes") if isinstance(e, Mapping) else None
    return int(n) if isinstance(n, (int, float)) and not isinstance(n, bool) else None


def nonempty_groups(gb: Optional[Mapping]) -> list[str]:
    return [g for g in GROUP_NAMES if (group_size(gb, g) or 0) > 0]


def empty_groups(gb: Optional[Mapping]) -> list[str]:
    return [g for g in GROUP_NAMES if group_size(gb, g) == 0]


def empty_group_line(g: str) -> str:
    return f"{g}: {EMPTY_GROUP} (no class has {GROUP_RULE[g]} training samples)"


def group_pair_figures(gb: Optional[Mapping]) -> list[tuple[str, Any]]:
    """(label, value) of the norm ratios and cross-group cosines between non-empty groups."""
    ok = set(nonempty_groups(gb))
    ratios = (gb.get("norm_ratios") or {}) if gb else {}
    cross = (gb.get("cross") or {}) if gb else {}
    out = []
    for a, b in GROUP_PAIRS:
        if a in ok and b in ok:
            out += [(f"‖w‖ {a}/{b}", ratios.get(f"w_{a}_over_{b}")),
                    (f"‖mu − mu_G‖ {a}/{b}", ratios.get(f"means_{a}_over_{b}")),
                    (f"cos of w, {a} vs {b}", (cross.get(f"{a}-{b}") or {}).get("w_cos_mean")),
                    (f"cos of means, {a} vs {b}", (cross.get(f"{a}-{b}") or {}).get("means_cos_mean"))]
    return out


def group_markdown(nc_split: Optional[Mapping], split: str) -> list[str]:
    """Markdown lines: one row per non-empty group (``GROUP_COLUMNS``), a line per empty
    group, then the ratios and cross-group cosines between the non-empty groups."""
    gb = nc_groups(nc_split)
    if gb is None:
        return [f"- {split}: no many/medium/few figures in nc.json (no training counts)."]
    md = ["| group | classes | " + " | ".join(h for h, _ in GROUP_COLUMNS) + " |",
          "|---|---|" + "---|" * len(GROUP_COLUMNS)]
    for g in nonempty_groups(gb):
        e = gb[g]
        n, p = group_size(gb, g), e.get("present_classes")
        ncls = f"{n}" + (f" ({p} in split)" if isinstance(p, int) and p != n else "")
        md.append(f"| {g} | {ncls} | " + " | ".join(fmt(e.get(k)) for _, k in GROUP_COLUMNS) + " |")
    md.append("")
    md += [f"- {empty_group_line(g)}." for g in empty_groups(gb)]
    pairs = group_pair_figures(gb)
    if pairs:
        md.append("- between groups: " + "; ".join(f"{lab} {fmt(v)}" for lab, v in pairs) + ".")
    elif len(nonempty_groups(gb)) < 2:
        md.append("- between groups: fewer than two non-empty groups, no ratio.")
    return md


def group_text_lines(nc_split: Optional[Mapping], class_names: Optional[Sequence[str]] = None,
                     indent: str = "  ") -> list[str]:
    """Plain-text lines of every group's minority-collapse figures (for ``allnc nc``)."""
    gb = nc_groups(nc_split)
    if gb is None:
        return [indent + "no many/medium/few figures (no training counts)"]
    short = [("cos w", "w_cos_mean"), ("cos means", "means_cos_mean"), ("|w|", "w_norm_mean"),
             ("|mu-muG|", "means_norm_mean"), ("self-duality", "self_duality_cos_mean"),
             ("NC1cb", "nc1_class_balanced"), ("NC4", "nc4")]
    pc = nc_split.get("per_class") if isinstance(nc_split, Mapping) else None
    group_of_class = (pc or {}).get("group") or []
    out = []
    for g in GROUP_NAMES:
        n = group_size(gb, g)
        if n == 0:
            out.append(f"{indent}{g:<6} {EMPTY_GROUP} (no class has {GROUP_RULE[g]} training samples)")
            continue
        e = gb.get(g) or {}
        line = f"{indent}{g:<6} {n if n is not None else '?':>3} classes  " + "  ".join(
            f"{lab} {fmt(e.get(k))}" for lab, k in short)
        if class_names is not None and group_of_class and n is not None and n <= 10:
            line += "  [" + ", ".join(str(class_names[c]) for c, gg in enumerate(group_of_class)
                                      if gg == g and c < len(class_names)) + "]"
        out.append(line)
    pairs = group_pair_figures(gb)
    if pairs:
        text = "  ".join(f"{lab} {fmt(v)}" for lab, v in pairs)
        out.append(indent + "between groups: " + text.replace("‖", "|").replace("−", "-"))
    return out


def class_names_of(metrics: Optional[Mapping], K: Optional[int]) -> tuple[Optional[list[str]], Optional[str]]:
    """(class names, note): metrics.json's ``classes`` list when it has K entries, else
    (None, a note saying that classes are shown by index)."""
    names = metrics.get("classes") if isinstance(metrics, Mapping) else None
    if isinstance(names, list) and names and (K is None or len(names) == K):
        return [str(n) for n in names], None
    if isinstance(names, list) and names:
        return None, (f"metrics.json lists {len(names)} class names for {K} classes: "
                      f"classes are shown by index")
    return None, "classes are shown by index: this run's metrics.json has no `classes` list"


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


def group_sizes_of(metrics: Optional[Mapping], nc: Optional[Mapping],
                   tc: Optional[Sequence[int]]) -> Optional[dict[str, int]]:
    """Classes per group: metrics.json's ``group_sizes``, else nc.json's groups, else the
    training counts."""
    gs = metrics.get("group_sizes") if isinstance(metrics, Mapping) else None
    if isinstance(gs, Mapping) and all(isinstance(gs.get(g), int) for g in GROUP_NAMES):
        return {g: int(gs[g]) for g in GROUP_NAMES}
    for split in ("train", "test"):
        gb = nc_groups((nc or {}).get(split)) if isinstance(nc, Mapping) else None
        if gb is not None and all(group_size(gb, g) is not None for g in GROUP_NAMES):
            return {g: group_size(gb, g) for g in GROUP_NAMES}
    if tc is not None:
        return {g: sum(group_of(int(n)) == g for n in tc) for g in GROUP_NAMES}
    return None


def _acc_cells(r: Mapping, sizes: Optional[Mapping]) -> list[str]:
    """top-1 and the three group cells of one accuracy result; an empty group says so."""
    groups = r.get("groups") or {}
    cells = [fmt_pct(r.get("top1"))]
    for g in GROUP_NAMES:
        n = sizes.get(g) if isinstance(sizes, Mapping) else None
        if n == 0:
            cells.append(EMPTY_GROUP)
        else:
            cells.append(fmt_pct(groups.get(g)) + (f" ({n} classes)" if n is not None else ""))
    return cells


def _per_class_table(metrics: Optional[Mapping], nc: Optional[Mapping], tc: Optional[Sequence[int]],
                     names: Optional[Sequence[str]]) -> list[str]:
    """One row per class (largest training count first): name, training samples, group,
    test accuracy and, when nc.json exists, the norms and self-duality of the training features."""
    acc = metrics.get("per_class") if isinstance(metrics, Mapping) else None
    pc = ((nc or {}).get("train") or {}).get("per_class") if isinstance(nc, Mapping) else None
    pc = pc if isinstance(pc, Mapping) else {}
    K = len(tc) if tc is not None else (len(acc) if acc else None)
    if not K:
        return []
    if K > 100:
        return [f"- {K} classes: the per-class table is left out (per_class in metrics.json and nc.json).", ""]
    cols = [("test accuracy (%)", acc if acc and len(acc) == K else None, fmt_pct),
            ("‖w_c‖", pc.get("w_norm"), fmt), ("‖mu_c − mu_G‖ (train)", pc.get("means_norm"), fmt),
            ("cos(w_c, mu_c − mu_G) (train)", pc.get("self_duality_cos"), fmt)]
    cols = [c for c in cols if c[1] is not None and len(c[1]) == K]
    md = ["| class | training samples | group | " + " | ".join(h for h, _, _ in cols) + " |",
          "|---|---|---|" + "---|" * len(cols)]
    order = plots.order_by_size(tc) if tc is not None else range(K)
    for c in order:
        c = int(c)
        name = f"{names[c]} ({c})" if names is not None else str(c)
        n = tc[c] if tc is not None else None
        g = group_of(int(n)) if n is not None else "–"
        md.append(f"| {name} | {n if n is not None else '–'} | {g} | "
                  + " | ".join(f(vals[c]) for _, vals, f in cols) + " |")
    return md + [""]


def errors_markdown(confusion, train_counts: Sequence[int]) -> list[str]:
    """The "where the errors go" section: the head-ward share of the test errors against its
    value were errors spread evenly, by true group, and the group confusion table."""
    hw, gc = headward_errors(confusion, train_counts), group_confusion(confusion, train_counts)
    md = ["## Where the errors go (test)", ""]
    if not hw["errors"]:
        return md + ["No test image is misclassified.", ""]
    by = ", ".join(f"{g} {fmt_pct(hw['groups'][g])}" for g in GROUP_NAMES if hw["groups"][g] is not None)
    md += [f"Of the {hw['errors']} misclassified test images, {fmt_pct(hw['all'])}% were predicted as a class with "
           f"more training images than their own (head-ward); {fmt_pct(hw['uniform'])}% would be if each class's "
           f"errors were spread evenly over the other classes. Head-ward share by true group: {by}.", ""]
    rows, cols = plots.group_confusion_axes(gc)
    md += ["| true group | " + " | ".join(f"predicted {g}" for g in cols) + " |", "|---|" + "---|" * len(cols)]
    md += [f"| {g} | " + " | ".join(fmt_pct(gc["shares"][g][h]) for h in cols) + " |" for g in rows]
    md += ["", "Percent of each true group's test images, class-balanced (the mean over its classes).", ""]
    return md


def calibration_markdown(metrics: Mapping) -> list[str]:
    """The calibration section: the test ECE (and the validation one where there is a split)
    and where the model is over- or under-confident."""
    bins = [b for b in metrics["reliability"] if b["count"]]
    n = sum(b["count"] for b in bins)
    over = sum(b["count"] for b in bins if b["confidence"] > b["accuracy"])
    val = (metrics.get("val") or {}).get("ece")
    return ["## Calibration (test)", "",
            f"Expected calibration error {fmt_pct(metrics.get('ece'))}% over {len(metrics['reliability'])} confidence bins"
            + (f" (validation: {fmt_pct(val)}%)" if val is not None else "") + ". "
            f"{100.0 * over / n:.0f}% of the test images fall in bins where the model is more confident than it is "
            "accurate (over-confident).", ""]


def write_report(run_dir) -> Path:
    """Write RUN_DIR/report/report.md and its PNGs from what the run directory holds.

    Returns the path of report.md. Raises :class:`RunDirError` when RUN_DIR is not a
    directory or holds none of the inputs. Classes are named by metrics.json's ``classes``
    list, or by index (with a note) when it has none.
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
    K = len(tc) if tc is not None else (len(metrics["per_class"]) if isinstance(metrics, Mapping)
                                        and isinstance(metrics.get("per_class"), list) else None)
    names, names_note = class_names_of(metrics, K)
    sizes = group_sizes_of(metrics, nc, tc)

    md: list[str] = [f"# Run report: {run_dir.name}", ""]
    label = run_label(config)
    if label:
        md += [f"Run: {label}", ""]
    if names_note and K:
        md += [f"Note: {names_note}.", ""]

    # ---- accuracy
    md += ["## Accuracy (last epoch)", ""]
    if metrics is not None:
        md += ["| split | top-1 | many | medium | few |", "|---|---|---|---|---|"]
        if metrics.get("top1") is not None or metrics.get("test_evaluated", True):
            md.append("| test | " + " | ".join(_acc_cells(metrics, sizes)) + " |")
        if isinstance(metrics.get("val"), Mapping):
            md.append("| validation | " + " | ".join(_acc_cells(metrics["val"], sizes)) + " |")
        md.append("")
        md.append(f"Percent. Group accuracy = mean of the per-class accuracies; groups from the training "
                  f"counts (many > {MANY_ABOVE}, medium {FEW_BELOW}-{MANY_ABOVE}, few < {FEW_BELOW} samples); "
                  f"– = not measured.")
        md.append("")
        p = None
        if metrics.get("per_class") is not None and tc is not None:
            p = plots.plot_per_class_accuracy(metrics["per_class"], tc, out / "per_class_acc.png",
                                              class_names=names)
        if p:
            md += [f"![per-class accuracy]({_rel(p, out)})", ""]
    else:
        md.append(f"- metrics.json not found: it is written at the end of training, or by "
                  f"`allnc eval {run_dir}`.")
        md.append("")

    # ---- where the errors go
    if (metrics is not None and metrics.get("confusion") is not None and tc is not None
            and metrics.get("test_evaluated", True)):
        md += errors_markdown(metrics["confusion"], tc)
        p = plots.plot_errors(metrics["confusion"], tc, out / "errors.png", class_names=names)
        if p:
            md += [f"![where the errors go]({_rel(p, out)})", ""]

    # ---- calibration
    if metrics is not None and metrics.get("reliability") and metrics.get("test_evaluated", True):
        md += calibration_markdown(metrics)
        p = plots.plot_reliability(metrics["reliability"], out / "reliability.png", ece=metrics.get("ece"),
                                   title="Reliability (test)")
        if p:
            md += [f"![reliability diagram]({_rel(p, out)})", ""]

    # ---- per class
    table = _per_class_table(metrics, nc, tc, names)
    if table:
        md += ["## Per class (largest training count first)", ""] + table

    # ---- training curves
    md += ["## Training", ""]
    if records:
        p = plots.plot_training_curves(records, out / "curves.png", group_sizes=sizes)
        if p:
            md += ["Training loss, learning rate, and the top-1 and group accuracies of every "
                   "evaluated epoch (test; validation when the run has a validation split):", "",
                   f"![training curves]({_rel(p, out)})", ""]
        if bad_lines:
            md += [f"({bad_lines} unreadable line(s) of metrics.jsonl skipped.)", ""]
        p = plots.plot_nc_over_epochs(records, out / "nc_epochs.png", group_sizes=sizes)
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
        for s in splits:
            md += [f"### Minority collapse by group ({s} features)", ""]
            md += group_markdown(nc[s], s) + [""]
        md += [GROUP_NOTE, ""]
        if mats is None:
            md += [f"- nc.npz not found: the cosine heat maps are made by `allnc nc {run_dir}`.", ""]
        else:
            prefixes = sorted({k.rsplit("_", 2)[0] for k in mats if k.endswith("_cos")},
                              key=lambda x: (x != "train", x != "test", x))
            for s in prefixes:
                m = {k: mats.get(f"{s}_{k}") for k in ("means_cos", "w_cos", "cross_cos")}
                Km = next(v for v in m.values() if v is not None).shape[0]
                counts = tc if tc is not None and len(tc) == Km else [1] * Km
                p = plots.plot_cosine_heatmaps(m, counts, out / f"cos_{s}.png",
                                               title=f"Cosines, {s} features (classes by training size; "
                                                     f"lines: many | medium | few)",
                                               class_names=names if names is not None and len(names) == Km else None)
                if p:
                    md += [f"![cosine heat maps, {s}]({_rel(p, out)})", ""]
        for s in splits:
            p = plots.plot_norms_vs_size(nc[s].get("per_class") or {}, out / f"norms_{s}.png", train_counts=tc,
                                         title=f"Per-class norms against class size ({s} features)",
                                         class_names=names)
            if p:
                md += [f"![norms, {s}]({_rel(p, out)})", ""]
    else:
        md += [f"- nc.json not found: the neural-collapse figures, cosine heat maps and norm plots "
               f"are made by `allnc nc {run_dir}`.", ""]

    path = out / "report.md"
    rundir.atomic_write_text(path, "\n".join(md).rstrip() + "\n")
    return path

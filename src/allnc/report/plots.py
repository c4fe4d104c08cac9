"""PNG plots of accuracy and neural-collapse diagnostics (matplotlib, Agg canvas).

Figures are built with ``matplotlib.figure.Figure`` + the Agg canvas, never pyplot, so
plotting neither changes the global backend nor leaks figures. Every function writes one
PNG and returns its path, or returns ``None`` when there is nothing to plot.
"""
from __future__ import annotations

import functools
import math
import re
import unicodedata
import warnings
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from .. import rundir
from ..errors import AllncWarning
from ..metrics.accuracy import FEW_BELOW, GROUP_NAMES, MANY_ABOVE, group_confusion, group_of, headward_errors
from ..metrics import nc_summary

GROUP_COLORS = {"many": "tab:blue", "medium": "tab:orange", "few": "tab:red", None: "tab:gray"}

# panels of the NC-over-epochs figures: title, [(summary key, label)], log scale
NC_PANELS: list[tuple[str, list[tuple[str, str]], bool]] = [
    ("NC1  Tr(Sw Sb+)/K", [("nc1", "sample-weighted"), ("nc1_cb", "class-balanced")], True),
    ("NC2 equinorm (std/mean of norms)", [("nc2_equinorm_means_cb", "means (cb)"), ("nc2_equinorm_w", "W")], False),
    ("NC2 equiangularity (std of cos)", [("nc2_equiangular_means_cb", "means (cb)"), ("nc2_equiangular_w", "W")], False),
    ("NC2 Gram distance to ETF", [("nc2_gram_means_cb", "means (cb)"), ("nc2_gram_w", "W")], False),
    ("NC3 self-duality", [("nc3", "sample-weighted"), ("nc3_cb", "class-balanced")], False),
    ("NC4 classifier vs NCM", [("nc4", "disagreement")], False),
    ("Minority collapse: mean cos of w_c in group",
     [("many_w_cos", "many"), ("medium_w_cos", "medium"), ("few_w_cos", "few")], False),
    ("Minority collapse: mean cos of mu_c - mu_G in group",
     [("many_means_cos", "many"), ("medium_means_cos", "medium"), ("few_means_cos", "few")], False),
    ("Norm ratios between groups",
     [("w_norm_ratio_many_medium", "||w|| many/medium"), ("w_norm_ratio_many_few", "||w|| many/few"),
      ("means_norm_ratio_many_medium", "||mu-muG|| many/medium"),
      ("means_norm_ratio_many_few", "||mu-muG|| many/few")], False),
]


def _glyph(text: str) -> str:
    """The character matplotlib names as ``\\N{CJK UNIFIED IDEOGRAPH-732B}`` (or as itself)."""
    if text.startswith("\\N{") and text.endswith("}"):
        try:
            return unicodedata.lookup(text[3:-1])
        except KeyError:
            return text[3:-1]
    return text


def _one_glyph_note(plot):
    """Matplotlib warns once per character its font lacks (class names in Chinese, say): a
    plot gathers those warnings into one ``AllncWarning`` naming the characters."""

    @functools.wraps(plot)
    def wrapped(*args, **kwargs):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = plot(*args, **kwargs)
        missing: dict[str, None] = {}
        for w in caught:
            m = re.search(r"Glyph \d+ \((.*)\) missing from font", str(w.message))
            if m is None:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
                continue
            missing.setdefault(_glyph(m.group(1)))
        if missing:
            shown = ", ".join(list(missing)[:5]) + (" ..." if len(missing) > 5 else "")
            where = Path(out).name if out is not None else plot.__name__
            warnings.warn(f"{where}: the plot's font has no glyph for {len(missing)} character(s) of the labels "
                          f"({shown}); they are drawn as boxes. Name a font that has them first in matplotlib's "
                          "font.sans-serif (matplotlibrc) to see them", AllncWarning, stacklevel=2)
        return out

    return wrapped


def _new_figure(w: float, h: float) -> Figure:
    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path) -> Path:
    path = Path(path)
    rundir.atomic_write_bytes(path, lambda f: fig.savefig(f, format="png"))
    return path


# where a point's name may go, in points from the point: right-above first, then
# right-below, left-above, left-below, above, below, then the same a line further out
_LABEL_SPOTS = tuple((dx, dy * far, ha, va) for far in (1, 3) for dx, dy, ha, va in (
    (3, 3, "left", "bottom"), (3, -3, "left", "top"), (-3, 3, "right", "bottom"),
    (-3, -3, "right", "top"), (0, 5, "center", "bottom"), (0, -5, "center", "top")))


def place_point_labels(ax, xs: Sequence[float], ys: Sequence[float], texts: Sequence[str], marker_pt: float = 3.0,
                       **text_kw) -> list:
    """Name each point (xs[i], ys[i]) with texts[i], each name at the first of ``_LABEL_SPOTS``
    where it covers no name placed before it and no point (a box of ``marker_pt`` points
    either side) and stays inside the axes (else where it covers least). Call it after the
    figure's layout and the axes' limits are final: the spots are measured on the drawn
    figure. Returns the annotations."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    r = marker_pt * fig.dpi / 72
    placed: list = [Bbox.from_extents(px - r, py - r, px + r, py + r)
                    for px, py in ax.transData.transform(np.column_stack([xs, ys]))] if len(texts) else []
    out = []
    for i in range(len(texts)):
        best = None
        for dx, dy, ha, va in _LABEL_SPOTS:
            ann = ax.annotate(texts[i], (xs[i], ys[i]), xytext=(dx, dy), textcoords="offset points",
                              ha=ha, va=va, **text_kw)
            box = ann.get_window_extent(renderer)
            cost = sum(_overlap(box, b) for b in placed) + _outside(box, frame)
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, ann, box)
            else:
                ann.remove()
            if cost == 0:
                break
        placed.append(best[2])
        out.append(best[1])
    return out


def _overlap(a, b) -> float:
    """Area (display pixels) shared by two boxes."""
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return w * h if w > 0 and h > 0 else 0.0


def _outside(box, frame) -> float:
    """Area (display pixels) of ``box`` outside ``frame``."""
    return box.width * box.height - _overlap(box, frame)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# per-group figures of a ``compute_nc`` "groups" entry -> flat key suffix (``<group>_<suffix>``)
GROUP_FLAT = {"w_cos_mean": "w_cos", "means_cos_mean": "means_cos", "nc1_class_balanced": "nc1_cb",
              "self_duality_cos_mean": "self_duality", "w_norm_mean": "w_norm", "means_norm_mean": "means_norm"}
GROUP_PAIRS = (("many", "medium"), ("many", "few"), ("medium", "few"))


def flat_nc(nc: Mapping, split: str = "train") -> dict:
    """Key NC figures (flat, ``nc_summary`` names) of one "nc" entry: a ``compute_nc`` dict,
    a {split: compute_nc dict} dict, or an already flat summary.

    From a full ``compute_nc`` dict every group's figures are added as well
    (``<group>_w_cos``, ``<group>_means_cos``, ``<group>_nc1_cb``, ``<group>_self_duality``,
    ``<group>_w_norm``, ``<group>_means_norm``, ``w_norm_ratio_<a>_<b>``,
    ``means_norm_ratio_<a>_<b>`` for the three group pairs); a flat summary has what it has."""
    if not isinstance(nc, Mapping):
        return {}
    if "sample_weighted" not in nc and isinstance(nc.get(split), Mapping):
        nc = nc[split]
    out = nc_summary(dict(nc))
    gb = nc.get("groups") if "sample_weighted" in nc else None
    if isinstance(gb, Mapping):
        for g in GROUP_NAMES:
            e = gb.get(g) if isinstance(gb.get(g), Mapping) else {}
            for k, suffix in GROUP_FLAT.items():
                out[f"{g}_{suffix}"] = e.get(k) if _finite(e.get(k)) else None
        ratios = gb.get("norm_ratios") if isinstance(gb.get("norm_ratios"), Mapping) else {}
        for a, b in GROUP_PAIRS:
            for kind in ("w", "means"):
                v = ratios.get(f"{kind}_{a}_over_{b}")
                out[f"{kind}_norm_ratio_{a}_{b}"] = v if _finite(v) else None
    return out


def nc_series(records: Iterable[Mapping], split: str = "train") -> tuple[list[float], dict[str, list]]:
    """(epochs, {summary key: values}) from per-epoch records that have an "nc" key."""
    epochs: list[float] = []
    series: dict[str, list] = {}
    rows = [r for r in records if isinstance(r, Mapping) and isinstance(r.get("nc"), Mapping)]
    for i, r in enumerate(rows):
        epochs.append(r.get("epoch", i))
        s = flat_nc(r["nc"], split)
        for k in set(series) | set(s):
            series.setdefault(k, [None] * i).append(s.get(k))
    return epochs, series


def _plot_xy(ax, x, y, label, **kw) -> bool:
    pts = [(a, b) for a, b in zip(x, y) if _finite(a) and _finite(b)]
    if not pts:
        return False
    xs, ys = zip(*pts)
    ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, ms=3, label=label, **kw)
    return True


def _panel_grid(n: int, ncols: int = 3, w: float = 4.4, h: float = 3.2):
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig = _new_figure(w * ncols, h * nrows)
    axes = [fig.add_subplot(nrows, ncols, i + 1) for i in range(n)]
    for ax in axes:  # epochs are whole numbers (the norm plots set their own log locator)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig, axes


@_one_glyph_note
def plot_nc_over_epochs(records: Sequence[Mapping], path, split: str = "train",
                        title: Optional[str] = None, group_sizes: Optional[Mapping] = None) -> Optional[Path]:
    """NC metrics against epoch, from metrics.jsonl records that carry an "nc" key. Group
    curves are drawn in their group's colour; ``group_sizes`` names the empty groups."""
    epochs, series = nc_series(records, split)
    panels = [(t, [(k, lab) for k, lab in keys if any(_finite(v) for v in series.get(k, []))], log)
              for t, keys, log in NC_PANELS]
    panels = [p for p in panels if p[1]]
    if not epochs or not panels:
        return None
    fig, axes = _panel_grid(len(panels))
    for ax, (t, keys, log) in zip(axes, panels):
        for k, lab in keys:
            _plot_xy(ax, epochs, series[k], lab, **({"color": GROUP_COLORS[lab]} if lab in GROUP_COLORS else {}))
        if any(lab in GROUP_NAMES for _, lab in keys):
            drawn = {lab for _, lab in keys}
            for g in GROUP_NAMES:
                if isinstance(group_sizes, Mapping) and (group_sizes.get(g) or 0) > 0 and g not in drawn:
                    ax.plot([], [], " ", label=f"{g}: not logged per epoch")
                _empty_group_note(ax, g, group_sizes)
        if log and all(v is None or v > 0 for k, _ in keys for v in series[k]):
            ax.set_yscale("log")
        ax.set_title(t, fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title or f"Neural collapse over epochs ({split} features)")
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    return _save(fig, path)


def _empty_group_note(ax, g: str, group_sizes: Optional[Mapping]) -> None:
    """A legend entry (no line) saying that group ``g`` has no class, when the sizes say so."""
    if isinstance(group_sizes, Mapping) and group_sizes.get(g) == 0:
        ax.plot([], [], " ", label=f"{g}: no class in this group")


@_one_glyph_note
def plot_training_curves(records: Sequence[Mapping], path, title: Optional[str] = None,
                         group_sizes: Optional[Mapping] = None) -> Optional[Path]:
    """Training loss (and its terms), learning rate, and the test / validation accuracy
    (top-1 and the many/medium/few group means: ``<split>_top1``, ``<split>_groups``)
    against epoch, from metrics.jsonl records. ``group_sizes`` (metrics.json) names the
    empty groups in the legends."""
    x = [r.get("epoch", i) for i, r in enumerate(records)]

    def has(k):
        return any(_finite(r.get(k)) for r in records)

    panels: list[tuple[str, str]] = []  # (kind, split or key)
    if has("loss"):
        panels.append(("loss", "loss"))
    if has("lr"):
        panels.append(("lr", "lr"))
    for split in ("test", "val"):
        if has(f"{split}_top1"):
            panels.append(("acc", split))
    if not panels:
        return None
    fig, axes = _panel_grid(len(panels), ncols=2 if len(panels) == 4 else 3, w=4.6, h=3.4)
    for ax, (kind, what) in zip(axes, panels):
        if kind == "loss":
            _plot_xy(ax, x, [r.get("loss") for r in records], "loss (total)", color="k")
            terms = sorted({k for r in records for k in r if k.startswith("loss_") and _finite(r.get(k))})
            for k in terms:
                _plot_xy(ax, x, [r.get(k) for r in records], k[5:], lw=1)
            ax.set_title("training loss (mean over the epoch)", fontsize=9)
            ax.set_ylabel("loss")
            if terms:
                ax.legend(fontsize=7)
        elif kind == "lr":
            _plot_xy(ax, x, [r.get("lr") for r in records], "learning rate")
            if all(r["lr"] > 0 for r in records if _finite(r.get("lr"))):
                ax.set_yscale("log")
            ax.set_title("learning rate", fontsize=9)
            ax.set_ylabel("lr")
        else:
            name = "test" if what == "test" else "validation"
            _plot_xy(ax, x, [r.get(f"{what}_top1") for r in records], "top-1", color="k", lw=2)
            for g in GROUP_NAMES:
                ys = [(r.get(f"{what}_groups") or {}).get(g) if isinstance(r.get(f"{what}_groups"), Mapping)
                      else None for r in records]
                if not _plot_xy(ax, x, ys, g, color=GROUP_COLORS[g], lw=1.2):
                    _empty_group_note(ax, g, group_sizes)
            ax.set_title(f"{name} accuracy: top-1 and group means", fontsize=9)
            ax.set_ylabel("accuracy (%)")
            ax.legend(fontsize=7)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.suptitle(title or "Training curves")
    fig.tight_layout()
    return _save(fig, path)


def order_by_size(train_counts: Sequence[int]) -> np.ndarray:
    """Class indices from the largest to the smallest training count (stable)."""
    return np.argsort(-np.asarray(train_counts, dtype=np.int64), kind="stable")


def _group_boundaries(sorted_counts: np.ndarray) -> list[tuple[float, str]]:
    """Positions (between bars) where the many/medium/few group changes, with the new group."""
    out = []
    groups = [group_of(int(n)) for n in sorted_counts]
    for i in range(1, len(groups)):
        if groups[i] != groups[i - 1]:
            out.append((i - 0.5, groups[i]))
    return out


def _tick_labels(order: Sequence[int], class_names: Optional[Sequence[str]]) -> list[str]:
    """Tick labels of the classes in ``order``: their names when given, else their indices."""
    return [str(class_names[c]) if class_names is not None else str(c) for c in order]


def _class_axis_label(class_names: Optional[Sequence[str]]) -> str:
    return ("class" if class_names is not None else "class index") + " (largest training count first)"


def _rotate_ticks(labels: Sequence[str]) -> int:
    """90 degrees when the tick labels would collide side by side, else 0."""
    return 90 if len(labels) > 12 or max((len(t) for t in labels), default=0) > 3 else 0


@_one_glyph_note
def plot_cosine_heatmaps(mats: Mapping[str, np.ndarray], train_counts: Sequence[int], path,
                         title: Optional[str] = None,
                         class_names: Optional[Sequence[str]] = None) -> Optional[Path]:
    """Heat maps of the K x K cosine matrices ("means_cos", "w_cos", "cross_cos"), classes
    ordered by training-set size (largest first), many/medium/few boundaries drawn, classes
    labelled by ``class_names`` (else by index) when K <= 40."""
    names = [("means_cos", "cos(mu_c - mu_G, mu_c' - mu_G)"), ("w_cos", "cos(w_c, w_c')"),
             ("cross_cos", "cos(mu_c - mu_G, w_c')  (rows: means, columns: w)")]
    names = [(k, t) for k, t in names if k in mats and mats[k] is not None]
    if not names:
        return None
    order = order_by_size(train_counts)
    bounds = _group_boundaries(np.asarray(train_counts)[order])
    labels = _tick_labels(order, class_names)
    fig = _new_figure(5.0 * len(names) + 1.2, 5.0 if len(order) <= 40 else 4.6)
    im = None
    for i, (k, t) in enumerate(names):
        ax = fig.add_subplot(1, len(names), i + 1)
        m = np.asarray(mats[k], dtype=float)[np.ix_(order, order)]
        im = ax.imshow(np.ma.masked_invalid(m), cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
        for pos, _ in bounds:
            ax.axhline(pos, color="k", lw=1.4)
            ax.axvline(pos, color="k", lw=1.4)
        ax.set_title(t, fontsize=9)
        ax.set_xlabel(_class_axis_label(class_names), fontsize=8)
        if len(order) <= 40:
            ax.set_xticks(range(len(order)), labels, fontsize=7, rotation=_rotate_ticks(labels))
            ax.set_yticks(range(len(order)), labels if i == 0 else [], fontsize=7)
        if i == 0:
            ax.set_ylabel("class" if class_names is not None else "class index")
    fig.colorbar(im, ax=fig.axes, shrink=0.8, label="cosine")
    fig.suptitle(title or "Cosine similarities (lines: many | medium | few)")
    return _save(fig, path)


@_one_glyph_note
def plot_norms_vs_size(per_class: Mapping, path, train_counts: Optional[Sequence[int]] = None,
                       title: Optional[str] = None,
                       class_names: Optional[Sequence[str]] = None) -> Optional[Path]:
    """||w_c|| and ||mu_c - mu_G|| against the class's training count (log x axis), points
    coloured by group, the group boundaries dashed (explained in the legend), each point
    named (``class_names``, else the index) when K <= 20.

    ``per_class``: the "per_class" block of ``compute_nc`` (w_norm, means_norm, train_count).
    """
    tc = train_counts if train_counts is not None else per_class.get("train_count")
    if tc is None:
        return None
    tc = np.asarray(tc, dtype=float)
    panels = [(k, lab) for k, lab in (("w_norm", "||w_c||  (classifier row)"),
                                      ("means_norm", "||mu_c - mu_G||  (class-balanced mu_G)"))
              if per_class.get(k) is not None]
    if not panels:
        return None
    K = len(tc)
    fig, axes = _panel_grid(len(panels), ncols=2, w=5.2, h=4.2)
    values = {k: np.asarray([v if _finite(v) else np.nan for v in per_class[k]], dtype=float) for k, _ in panels}
    for ax, (k, lab) in zip(axes, panels):
        vals = values[k]
        for g in GROUP_NAMES:
            sel = np.array([group_of(int(n)) == g for n in tc]) & np.isfinite(vals) & (tc > 0)
            if sel.any():
                ax.scatter(tc[sel], vals[sel], s=16, color=GROUP_COLORS[g], label=f"{g} ({int(sel.sum())})")
        ax.set_xscale("log")
        for j, b in enumerate((FEW_BELOW, MANY_ABOVE)):
            ax.axvline(b, color="k", ls="--", lw=0.7,
                       label=f"group boundaries: few < {FEW_BELOW} <= medium <= {MANY_ABOVE} < many"
                       if j == 0 else None)
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.margins(y=0.08)  # room for the point names
        ax.set_xlabel("training samples of the class (log scale)")
        ax.set_ylabel("norm")
        ax.set_title(lab, fontsize=9)
        ax.grid(alpha=0.3, which="both")
    # one legend for both panels, below them: it never hides a point
    handles, labs = axes[0].get_legend_handles_labels()
    fig.legend(handles, labs, fontsize=8, loc="lower center", ncol=len(labs), frameon=False)
    fig.suptitle(title or "Per-class norms against class size")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    if K <= 20:  # names last: their spots are measured on the final layout
        for ax, (k, _) in zip(axes, panels):
            vals = values[k]
            ax.set_xlim(ax.get_xlim())
            ax.set_ylim(ax.get_ylim())
            shown = [c for c in range(K) if np.isfinite(vals[c]) and tc[c] > 0]
            place_point_labels(ax, [tc[c] for c in shown], [vals[c] for c in shown],
                               [str(class_names[c]) if class_names is not None else str(c) for c in shown],
                               fontsize=6, color="0.25")
    return _save(fig, path)


@_one_glyph_note
def plot_per_class_accuracy(per_class_acc: Sequence[Optional[float]], train_counts: Sequence[int], path,
                            title: Optional[str] = None,
                            class_names: Optional[Sequence[str]] = None) -> Optional[Path]:
    """Per-class accuracy bars, classes ordered by training count (largest first) and named
    by ``class_names`` (else by index), coloured by group, with the group boundaries and each
    group's mean accuracy (a line across the group, its value in the legend beside the axes,
    never over the bars). Classes without test samples get no bar."""
    if not per_class_acc or train_counts is None or len(per_class_acc) != len(train_counts):
        return None
    order = order_by_size(train_counts)
    tc = np.asarray(train_counts)[order]
    acc = np.asarray([per_class_acc[i] if _finite(per_class_acc[i]) else np.nan for i in order], dtype=float)
    K = len(acc)
    labels = _tick_labels(order, class_names)
    fig = _new_figure(min(6.5 + 0.14 * K, 26), 4.6)
    ax = fig.add_subplot(1, 1, 1)
    colors = [GROUP_COLORS[group_of(int(n))] for n in tc]
    ax.bar(np.arange(K), np.nan_to_num(acc, nan=0.0), color=colors, width=0.85 if K < 200 else 1.0)
    for j, (pos, g) in enumerate(_group_boundaries(tc)):
        ax.axvline(pos, color="k", ls="--", lw=0.8, label="group boundary" if j == 0 else None)
    for g in GROUP_NAMES:
        idx = np.nonzero([group_of(int(n)) == g for n in tc])[0]
        if not idx.size:
            ax.bar([0], [0], width=0, color=GROUP_COLORS[g], label=f"{g}: no class in this group")
            continue
        lab = f"{g} ({idx.size} classes)"
        if np.isfinite(acc[idx]).any():
            m = float(np.nanmean(acc[idx]))
            ax.hlines(m, idx[0] - 0.5, idx[-1] + 0.5, color="k", lw=1.5)
            lab += f": mean {m:.1f}%"
        ax.bar([idx[0]], [0], width=0, color=GROUP_COLORS[g], label=lab)
    ax.plot([], [], color="k", lw=1.5, label="group mean (line)")
    ax.set_xlim(-0.5, K - 0.5)
    ax.set_ylim(0, 100)
    if K <= 60:
        ax.set_xticks(range(K), labels, fontsize=7, rotation=_rotate_ticks(labels))
    ax.set_xlabel(_class_axis_label(class_names))
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.set_title(title or "Per-class accuracy (dashed: many | medium | few)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def group_confusion_axes(gc: Mapping) -> tuple[list[str], list[str]]:
    """The rows (true groups with tested classes) and columns (those groups and any group
    predicted) of a ``group_confusion`` table: a group without classes gets neither."""
    rows = [g for g in GROUP_NAMES if gc["shares"][g] is not None]
    return rows, [g for g in GROUP_NAMES if g in rows or any(gc["counts"][r][g] for r in rows)]


@_one_glyph_note
def plot_errors(confusion, train_counts: Sequence[int], path, title: Optional[str] = None,
                class_names: Optional[Sequence[str]] = None, max_classes: int = 100) -> Optional[Path]:
    """Where the errors go. Left (K <= ``max_classes``): each true class's test images by
    predicted class, in percent of the class's images, the correct ones (the diagonal) left
    out so that the errors have the colour scale; classes ordered by training count (largest
    first), so errors towards larger classes fall left of the diagonal. Right: the same by
    group (rows: true group, class-balanced; the diagonal included). The title gives the
    head-ward share of all errors beside its value were errors spread evenly."""
    if confusion is None or train_counts is None or len(confusion) != len(train_counts):
        return None
    conf = np.asarray(confusion, dtype=float)
    if conf.sum() == 0:
        return None
    K = len(train_counts)
    gc, hw = group_confusion(conf, train_counts), headward_errors(conf, train_counts)
    rows, cols = group_confusion_axes(gc)
    full = K <= max_classes
    side = min(3.6 + 0.06 * K, 9.0)  # the class matrix is square: its side sets the height
    left = side + 1.8  # tick labels and colour bar
    fig = _new_figure((left if full else 0) + 3.8, max(side + 2.2, 4.4) if full else 4.4)
    grid = fig.add_gridspec(1, 2, width_ratios=[left, 3.8]) if full else None
    if full:
        ax = fig.add_subplot(grid[0, 0])
        order = order_by_size(train_counts)
        n = conf.sum(axis=1, keepdims=True)
        m = np.where(n > 0, 100.0 * conf / np.maximum(n, 1), np.nan)[np.ix_(order, order)]
        np.fill_diagonal(m, np.nan)
        top = float(np.nanmax(m)) if np.isfinite(m).any() and np.nanmax(m) > 0 else 1.0
        im = ax.imshow(np.ma.masked_invalid(m), cmap="Reds", vmin=0, vmax=top, interpolation="nearest")
        ax.set_facecolor("0.85")  # the hidden diagonal (and classes without test images)
        for pos, _ in _group_boundaries(np.asarray(train_counts)[order]):
            ax.axhline(pos, color="k", lw=1.2)
            ax.axvline(pos, color="k", lw=1.2)
        if K <= 12:
            for i in range(K):
                for j in range(K):
                    if np.isfinite(m[i, j]) and m[i, j] >= 1:  # below 1 %, the colour says enough
                        ax.text(j, i, f"{m[i, j]:.0f}", ha="center", va="center", fontsize=6,
                                color="white" if m[i, j] > 0.6 * top else "black")
        if K <= 40:
            labels = _tick_labels(order, class_names)
            ax.set_xticks(range(K), labels, fontsize=7, rotation=_rotate_ticks(labels))
            ax.set_yticks(range(K), labels, fontsize=7)
        else:  # positions are ranks by size, not class indices: no numbers
            ax.set_xticks([])
            ax.set_yticks([])
        ax.set_xlabel("predicted " + _class_axis_label(class_names), fontsize=8)
        ax.set_ylabel("true class", fontsize=8)
        ax.set_title("errors, % of the true class's test images\n(diagonal hidden; left of it: a larger class)",
                     fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03, label="% of the class's test images")
    ax = fig.add_subplot(grid[0, 1]) if full else fig.add_subplot(1, 1, 1)
    g = np.array([[gc["shares"][r][c] for c in cols] for r in rows])
    ax.imshow(g, cmap="Blues", vmin=0, vmax=100, interpolation="nearest")
    for i in range(len(rows)):
        for j in range(len(cols)):
            ax.text(j, i, f"{g[i, j]:.1f}", ha="center", va="center", fontsize=9,
                    color="white" if g[i, j] > 60 else "black")
    ax.set_xticks(range(len(cols)), [f"{c}" for c in cols], fontsize=8)
    ax.set_yticks(range(len(rows)), [f"{r}" for r in rows], fontsize=8)
    ax.set_xlabel("predicted group", fontsize=8)
    ax.set_ylabel("true group", fontsize=8)
    ax.set_title("by group, % of the true group's images\n(class-balanced; diagonal included)", fontsize=9)
    head = f"{hw['all']:.0f}%" if hw["all"] is not None else "–"
    even = f"{hw['uniform']:.0f}%" if hw["uniform"] is not None else "–"
    fig.suptitle(title or f"Where the errors go: {head} of the {hw['errors']} errors are head-ward "
                          f"(towards a class with more training images; {even} if spread evenly)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.95))  # room for the title
    return _save(fig, path)


# the NC curves of a comparison: (title, summary key, log scale); panels without data are dropped
COMPARE_PANELS = [
    ("NC1 class-balanced", "nc1_cb", True),
    ("NC2 equiangularity, W", "nc2_equiangular_w", False),
    ("NC2 equiangularity, centred means (cb)", "nc2_equiangular_means_cb", False),
    ("NC3 self-duality (cb)", "nc3_cb", False),
    ("NC4 classifier vs NCM", "nc4", False),
    *[(f"mean cos of W, {g} group", f"{g}_w_cos", False) for g in GROUP_NAMES],
    *[(f"mean cos of centred means, {g} group", f"{g}_means_cos", False) for g in GROUP_NAMES],
    *[(f"mean ||w|| {a} / {b}", f"w_norm_ratio_{a}_{b}", False) for a, b in GROUP_PAIRS],
]


def _acc_series(recs: Sequence[Mapping], split: str, g: Optional[str]) -> tuple[list, list]:
    """(epochs, accuracy) of ``<split>_top1`` (g None) or of group g in ``<split>_groups``."""
    xs, ys = [], []
    for i, r in enumerate(recs):
        if g is None:
            v = r.get(f"{split}_top1")
        else:
            gr = r.get(f"{split}_groups")
            v = gr.get(g) if isinstance(gr, Mapping) else None
        if _finite(v):
            xs.append(r.get("epoch", i))
            ys.append(v)
    return xs, ys


@_one_glyph_note
def plot_overlaid_curves(runs: Mapping[str, Sequence[Mapping]], path, split: str = "train",
                         title: Optional[str] = None,
                         group_sizes: Optional[Mapping[str, Optional[Mapping]]] = None) -> Optional[Path]:
    """Overlay several runs against epoch, one colour per run: top-1 and each group's mean
    accuracy (test solid, validation dashed when logged), then the key NC figures
    (``COMPARE_PANELS``) of the ``split`` features logged during training. Panels without
    data are left out. ``group_sizes`` ({run: {group: classes}}) names in the group panels
    the runs whose group is empty."""
    colors = {name: f"C{i % 10}" for i, name in enumerate(runs)}
    group_sizes = group_sizes or {}
    # panel: (title, [(run, x, y, linestyle, label)], log)
    panels: list[tuple[str, list[tuple], bool]] = []
    for g in (None, *GROUP_NAMES):
        lines = []
        for name, recs in runs.items():
            for acc_split, ls in (("test", "-"), ("val", "--")):
                x, y = _acc_series(recs, acc_split, g)
                if x:
                    lines.append((name, x, y, ls, name + (" (validation)" if acc_split == "val" else "")))
        if lines:
            lines += [(name, [], [], "-", f"{name}: no class in this group") for name in runs
                      if g is not None and isinstance(group_sizes.get(name), Mapping) and group_sizes[name].get(g) == 0]
            panels.append(("top-1 accuracy (%)" if g is None else f"{g} group: mean accuracy (%)", lines, False))
    nc_by_run = {name: nc_series(recs, split) for name, recs in runs.items()}
    for t, k, log in COMPARE_PANELS:
        lines = [(name, ep, s[k], "-", name) for name, (ep, s) in nc_by_run.items()
                 if k in s and any(_finite(v) for v in s[k])]
        if lines:
            panels.append((t + f" ({split} features)", lines, log))
    if not panels:
        return None
    fig, axes = _panel_grid(len(panels), ncols=min(4, len(panels)), w=4.4, h=3.3)
    for ax, (t, lines, log) in zip(axes, panels):
        for name, x, y, ls, lab in lines:
            if not x:
                ax.plot([], [], " ", label=lab)
            _plot_xy(ax, x, y, lab, color=colors[name], ls=ls)
        if log and all(v is None or v > 0 for *_, y, _ls, _lab in lines for v in y):
            ax.set_yscale("log")
        ax.set_title(t, fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title or "Comparison of runs (test solid, validation dashed)")
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    return _save(fig, path)


def plot_reliability(bins: Sequence[Mapping], path, ece: Optional[float] = None,
                     title: Optional[str] = None) -> Optional[Path]:
    """The reliability diagram of a split (``evaluate_accuracy``'s ``reliability``): each
    confidence bin's accuracy as a bar at its place on [0, 1], the diagonal where a
    calibrated model's bars end, the gap to it shaded, and below the share of predictions in
    each bin. None without predictions."""
    total = sum(b["count"] for b in bins)
    if not total:
        return None
    fig = _new_figure(4.6, 5.0)
    grid = fig.add_gridspec(2, 1, height_ratios=[3, 1], hspace=0.08)
    ax, ax2 = fig.add_subplot(grid[0]), fig.add_subplot(grid[1])
    w = bins[0]["hi"] - bins[0]["lo"]
    full = [b for b in bins if b["count"]]
    mid = [b["lo"] + w / 2 for b in full]
    ax.bar(mid, [b["accuracy"] for b in full], width=w, color="tab:blue", edgecolor="k", lw=0.5, label="accuracy")
    ax.bar(mid, [b["confidence"] - b["accuracy"] for b in full], bottom=[b["accuracy"] for b in full], width=w,
           color="tab:red", alpha=0.3, edgecolor="tab:red", lw=0.5, label="gap to the confidence")
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy")
    ax.tick_params(labelbottom=False)
    ax.legend(loc="upper left", fontsize=7)
    head = title or "Reliability"
    ax.set_title(head + (f" (ECE {ece:.2f}%)" if ece is not None else ""), fontsize=9)
    ax2.bar([b["lo"] + w / 2 for b in bins], [100.0 * b["count"] / total for b in bins], width=w, color="0.5",
            edgecolor="k", lw=0.5)
    ax2.set(xlim=(0, 1), xlabel="confidence (largest softmax probability)", ylabel="% of images")
    return _save(fig, path)

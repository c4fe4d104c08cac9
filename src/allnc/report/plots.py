"""PNG plots of accuracy and neural-collapse diagnostics (matplotlib, Agg canvas).

Figures are built with ``matplotlib.figure.Figure`` + the Agg canvas, never pyplot, so
plotting neither changes the global backend nor leaks figures. Every function writes one
PNG and returns its path, or returns ``None`` when there is nothing to plot.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .. import rundir
from ..metrics.accuracy import FEW_BELOW, GROUP_NAMES, MANY_ABOVE, group_of
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
    ("Minority collapse: mean cos in group",
     [("many_w_cos", "W many"), ("few_w_cos", "W few"), ("many_means_cos", "means many"),
      ("few_means_cos", "means few")], False),
    ("Norm ratio many/few", [("w_norm_ratio_many_few", "||w||"), ("means_norm_ratio_many_few", "||mu-muG||")], False),
]


def _new_figure(w: float, h: float) -> Figure:
    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path) -> Path:
    path = Path(path)
    rundir.atomic_write_bytes(path, lambda f: fig.savefig(f, format="png"))
    return path


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def flat_nc(nc: Mapping, split: str = "train") -> dict:
    """Key NC figures (flat, ``nc_summary`` names) of one "nc" entry: a ``compute_nc`` dict,
    a {split: compute_nc dict} dict, or an already flat summary."""
    if not isinstance(nc, Mapping):
        return {}
    if "sample_weighted" not in nc and isinstance(nc.get(split), Mapping):
        nc = nc[split]
    return nc_summary(dict(nc))


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
    return fig, axes


def plot_nc_over_epochs(records: Sequence[Mapping], path, split: str = "train",
                        title: Optional[str] = None) -> Optional[Path]:
    """NC metrics against epoch, from metrics.jsonl records that carry an "nc" key."""
    epochs, series = nc_series(records, split)
    panels = [(t, [(k, lab) for k, lab in keys if any(_finite(v) for v in series.get(k, []))], log)
              for t, keys, log in NC_PANELS]
    panels = [p for p in panels if p[1]]
    if not epochs or not panels:
        return None
    fig, axes = _panel_grid(len(panels))
    for ax, (t, keys, log) in zip(axes, panels):
        for k, lab in keys:
            _plot_xy(ax, epochs, series[k], lab)
        if log and all(v is None or v > 0 for k, _ in keys for v in series[k]):
            ax.set_yscale("log")
        ax.set_title(t, fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title or f"Neural collapse over epochs ({split} features)")
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    return _save(fig, path)


def plot_training_curves(records: Sequence[Mapping], path, title: Optional[str] = None) -> Optional[Path]:
    """Loss, learning rate and test top-1 against epoch (metrics.jsonl records)."""
    keys = [("loss", "training loss", False), ("lr", "learning rate", True), ("test_top1", "test top-1 (%)", False)]
    x = [r.get("epoch", i) for i, r in enumerate(records)]
    keys = [k for k in keys if any(_finite(r.get(k[0])) for r in records)]
    if not keys:
        return None
    fig, axes = _panel_grid(len(keys), ncols=3, w=4.2, h=3.0)
    for ax, (k, lab, log) in zip(axes, keys):
        _plot_xy(ax, x, [r.get(k) for r in records], lab)
        if log and all(_finite(r.get(k)) and r[k] > 0 for r in records if k in r and r[k] is not None):
            ax.set_yscale("log")
        ax.set_title(lab, fontsize=9)
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


def plot_cosine_heatmaps(mats: Mapping[str, np.ndarray], train_counts: Sequence[int], path,
                         title: Optional[str] = None) -> Optional[Path]:
    """Heat maps of the K x K cosine matrices ("means_cos", "w_cos", "cross_cos"), classes
    ordered by training-set size (largest first), many/medium/few boundaries drawn."""
    names = [("means_cos", "cos(mu_c - mu_G, mu_c' - mu_G)"), ("w_cos", "cos(w_c, w_c')"),
             ("cross_cos", "cos(mu_c - mu_G, w_c')")]
    names = [(k, t) for k, t in names if k in mats and mats[k] is not None]
    if not names:
        return None
    order = order_by_size(train_counts)
    bounds = _group_boundaries(np.asarray(train_counts)[order])
    fig = _new_figure(5.0 * len(names) + 1.0, 4.8)
    im = None
    for i, (k, t) in enumerate(names):
        ax = fig.add_subplot(1, len(names), i + 1)
        m = np.asarray(mats[k], dtype=float)[np.ix_(order, order)]
        im = ax.imshow(np.ma.masked_invalid(m), cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
        for pos, _ in bounds:
            ax.axhline(pos, color="k", lw=0.8)
            ax.axvline(pos, color="k", lw=0.8)
        ax.set_title(t, fontsize=9)
        ax.set_xlabel("class (largest training count first)")
        if len(order) <= 40:
            ax.set_xticks(range(len(order)), [str(c) for c in order], fontsize=7,
                          rotation=90 if len(order) > 12 else 0)
            ax.set_yticks(range(len(order)), [str(c) for c in order], fontsize=7)
        if i == 0:
            ax.set_ylabel("class")
    fig.colorbar(im, ax=fig.axes, shrink=0.8)
    fig.suptitle(title or "Cosine similarities (lines: many | medium | few)")
    return _save(fig, path)


def plot_norms_vs_size(per_class: Mapping, path, train_counts: Optional[Sequence[int]] = None,
                       title: Optional[str] = None) -> Optional[Path]:
    """||w_c|| and ||mu_c - mu_G|| against the class's training count (log x axis).

    ``per_class``: the "per_class" block of ``compute_nc`` (w_norm, means_norm, train_count).
    """
    tc = train_counts if train_counts is not None else per_class.get("train_count")
    if tc is None:
        return None
    tc = np.asarray(tc, dtype=float)
    panels = [(k, lab) for k, lab in (("w_norm", "||w_c||"), ("means_norm", "||mu_c - mu_G|| (class-balanced mu_G)"))
              if per_class.get(k) is not None]
    if not panels:
        return None
    fig, axes = _panel_grid(len(panels), ncols=2, w=5.0, h=3.8)
    for ax, (k, lab) in zip(axes, panels):
        vals = np.asarray([v if _finite(v) else np.nan for v in per_class[k]], dtype=float)
        for g in GROUP_NAMES:
            sel = np.array([group_of(int(n)) == g for n in tc]) & np.isfinite(vals) & (tc > 0)
            if sel.any():
                ax.scatter(tc[sel], vals[sel], s=14, color=GROUP_COLORS[g], label=g)
        ax.set_xscale("log")
        for b in (FEW_BELOW, MANY_ABOVE):
            ax.axvline(b, color="k", ls="--", lw=0.7)
        ax.set_xlabel("training samples of the class (log)")
        ax.set_title(lab, fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle(title or "Per-class norms against class size")
    fig.tight_layout()
    return _save(fig, path)


def plot_per_class_accuracy(per_class_acc: Sequence[Optional[float]], train_counts: Sequence[int], path,
                            title: Optional[str] = None) -> Optional[Path]:
    """Per-class accuracy bars, classes ordered by training count (largest first), with the
    many/medium/few boundaries and each group's mean accuracy marked. Classes without
    test samples get no bar."""
    if not per_class_acc or train_counts is None or len(per_class_acc) != len(train_counts):
        return None
    order = order_by_size(train_counts)
    tc = np.asarray(train_counts)[order]
    acc = np.asarray([per_class_acc[i] if _finite(per_class_acc[i]) else np.nan for i in order], dtype=float)
    K = len(acc)
    fig = _new_figure(min(4 + 0.12 * K, 24), 4.0)
    ax = fig.add_subplot(1, 1, 1)
    colors = [GROUP_COLORS[group_of(int(n))] for n in tc]
    ax.bar(np.arange(K), np.nan_to_num(acc, nan=0.0), color=colors, width=0.85 if K < 200 else 1.0)
    for pos, g in _group_boundaries(tc):
        ax.axvline(pos, color="k", ls="--", lw=0.8)
    for g in GROUP_NAMES:
        idx = np.nonzero([group_of(int(n)) == g for n in tc])[0]
        if idx.size and np.isfinite(acc[idx]).any():
            m = float(np.nanmean(acc[idx]))
            ax.hlines(m, idx[0] - 0.5, idx[-1] + 0.5, color="k", lw=1.5)
            ax.text((idx[0] + idx[-1]) / 2, min(m + 2, 103), f"{g} {m:.1f}", ha="center", fontsize=8)
    ax.set_xlim(-0.5, K - 0.5)
    ax.set_ylim(0, 108)
    if K <= 60:
        ax.set_xticks(range(K), [str(c) for c in order], fontsize=7, rotation=90 if K > 20 else 0)
    ax.set_xlabel("class (largest training count first)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title or "Per-class accuracy (dashed: many | medium | few)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


# the NC curves of a comparison: (title, summary key, log scale)
COMPARE_PANELS = [
    ("NC1 class-balanced", "nc1_cb", True),
    ("NC2 equiangularity, W", "nc2_equiangular_w", False),
    ("NC2 equiangularity, centred means (cb)", "nc2_equiangular_means_cb", False),
    ("NC3 self-duality (cb)", "nc3_cb", False),
    ("NC4 classifier vs NCM", "nc4", False),
    ("mean cos of W, few group", "few_w_cos", False),
    ("mean cos of centred means, few group", "few_means_cos", False),
    ("mean ||w|| many / few", "w_norm_ratio_many_few", False),
]


def plot_overlaid_curves(runs: Mapping[str, Sequence[Mapping]], path, split: str = "train",
                         title: Optional[str] = None) -> Optional[Path]:
    """Overlay several runs: test top-1 and key NC metrics (``COMPARE_PANELS``) against
    epoch, one line per run. Panels without data are left out."""
    panels: list[tuple[str, dict[str, tuple[list, list]], bool]] = []
    acc = {}
    for name, recs in runs.items():
        x = [r.get("epoch", i) for i, r in enumerate(recs) if _finite(r.get("test_top1"))]
        y = [r["test_top1"] for r in recs if _finite(r.get("test_top1"))]
        if x:
            acc[name] = (x, y)
    if acc:
        panels.append(("test top-1 (%)", acc, False))
    nc_by_run = {name: nc_series(recs, split) for name, recs in runs.items()}
    for t, k, log in COMPARE_PANELS:
        data = {name: (ep, s[k]) for name, (ep, s) in nc_by_run.items()
                if k in s and any(_finite(v) for v in s[k])}
        if data:
            panels.append((t, data, log))
    if not panels:
        return None
    fig, axes = _panel_grid(len(panels), ncols=3, w=4.4, h=3.2)
    for ax, (t, data, log) in zip(axes, panels):
        for name, (x, y) in data.items():
            _plot_xy(ax, x, y, name)
        if log and all(v is None or v > 0 for _, y in data.values() for v in y):
            ax.set_yscale("log")
        ax.set_title(t, fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title or "Comparison of runs")
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    return _save(fig, path)

"""Grid summary: one row per run group (runs whose names differ only by ``__seed<S>``) with
the seeds finished and the mean and sample standard deviation over them of top-1 and
many/medium/few accuracy (percent), plus validation top-1 where runs have
``metrics.json["val"]["top1"]``; as a markdown table (``summarize``) and, written into the
grid folder by ``write_summaries``, as ``summary.md``, ``summary.csv`` and ``summary.json``.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from ..rundir import METRICS, atomic_write_json, atomic_write_text
from .expand import SEED_RE

__all__ = ["summarize", "summary_rows", "summary_markdown", "summary_csv", "write_summaries"]

# (column, path into metrics.json); the last one is only shown in markdown when a run has it
_COLUMNS = (("top1", ("top1",)), ("many", ("groups", "many")), ("medium", ("groups", "medium")),
            ("few", ("groups", "few")), ("val_top1", ("val", "top1")))
_OPTIONAL = ("val_top1",)
FIELDS = ["run", "method", "seeds_finished", "seeds_total"] + [f"{c}_{s}" for c, _ in _COLUMNS for s in ("mean", "std")]


def _get(d: Any, path: Sequence[str]) -> Optional[float]:
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    if isinstance(d, bool) or not isinstance(d, (int, float)) or not math.isfinite(d):
        return None
    return float(d)


def _stats(vals: list[float]) -> tuple[Optional[float], Optional[float]]:
    """(mean, sample std); the std needs two values, the mean one."""
    if not vals:
        return None, None
    m = sum(vals) / len(vals)
    if len(vals) == 1:
        return m, None
    return m, math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))


def _cell(mean: Optional[float], std: Optional[float]) -> str:
    if mean is None:
        return "–"
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def summary_rows(run_dirs: Sequence[Union[str, Path]]) -> list[dict]:
    """One dict per run group, in first-seen order, with the keys ``FIELDS``: the group name,
    seeds finished (a readable metrics.json) and in all, and per column the mean and sample std
    over the finished seeds (None where there is no value, or for the std only one)."""
    groups: dict[str, list[Path]] = {}
    for d in run_dirs:
        p = Path(d)
        groups.setdefault(SEED_RE.sub("", p.name), []).append(p)
    rows = []
    for name, dirs in groups.items():
        metrics = []
        for d in dirs:
            try:
                m = json.loads((d / METRICS).read_text())
            except (OSError, ValueError):
                continue
            if isinstance(m, dict):
                metrics.append(m)
        shown = sorted({str(m.get("display_name") or "") for m in metrics} - {""})
        row: dict[str, Any] = {"run": name, "method": ", ".join(shown), "seeds_finished": len(metrics),
                               "seeds_total": len(dirs)}
        for col, path in _COLUMNS:
            row[f"{col}_mean"], row[f"{col}_std"] = _stats([v for v in (_get(m, path) for m in metrics) if v is not None])
        rows.append(row)
    return rows


def summary_markdown(rows: Sequence[dict]) -> str:
    """The markdown table of ``summary_rows`` (an optional column only when a row has it)."""
    cols = [c for c, _ in _COLUMNS if c not in _OPTIONAL or any(r[f"{c}_mean"] is not None for r in rows)]
    head = [c.replace("_", " ") for c in cols]
    lines = ["| run | method | seeds | " + " | ".join(head) + " |", "|---|---|---|" + "---|" * len(cols)]
    for r in rows:
        cells = [_cell(r[f"{c}_mean"], r[f"{c}_std"]) for c in cols]
        lines.append(f"| {r['run']} | {r.get('method') or '–'} | {r['seeds_finished']}/{r['seeds_total']} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def summary_csv(rows: Sequence[dict]) -> str:
    """``summary_rows`` as CSV: a header line of ``FIELDS``, numbers at full precision, an
    empty cell where there is no value."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(FIELDS)
    for r in rows:
        w.writerow(["" if r[k] is None else r[k] for k in FIELDS])
    return buf.getvalue()


def summarize(run_dirs: Sequence[Union[str, Path]]) -> str:
    """A markdown table of top-1 and many/medium/few accuracy (percent) read from each run
    directory's metrics.json; runs whose names differ only by a ``__seed<S>`` suffix form one
    row with mean ± sample standard deviation over the seeds that finished. A validation
    top-1 column is added when a run has ``metrics.json["val"]["top1"]``."""
    return summary_markdown(summary_rows(run_dirs))


def write_summaries(out_dir: Union[str, Path], run_dirs: Sequence[Union[str, Path]]) -> str:
    """Write ``summary.md``, ``summary.csv`` and ``summary.json`` (a list of row objects) of
    the same rows into ``out_dir``, each atomically; returns the markdown."""
    out = Path(out_dir)
    rows = summary_rows(run_dirs)
    text = summary_markdown(rows)
    atomic_write_text(out / "summary.md", text)
    atomic_write_text(out / "summary.csv", summary_csv(rows))
    atomic_write_json(out / "summary.json", rows)
    return text

"""Results files and the tables rendered from them.

A *results file* is one JSON per finished run, named after its table cell
(``results/<cell>.json``, see ``allnc.config.cell_name``): the metrics, the final
neural-collapse figures, the resolved config, commit, device, library versions and wall
time. Tables in the README are rendered from these files only (``scripts/render_results.py``),
and a test checks that the README holds exactly what the files give.
"""
from __future__ import annotations

import functools
import json
import math
import re
from pathlib import Path
from typing import Any, Iterable, Optional

from ..config import cell_posthoc, parse_cell_name
from ..metrics.accuracy import error_summary

#: config suffix -> the name a table shows, in the order rows appear
METHOD_NAMES: dict[str, str] = {
    "ce": "CE",
    "ce_rs": "CE + class-balanced sampling",
    "ce_mixup": "CE + mixup (MiSLAS's first stage)",
    "la": "logit adjustment",
    "bsce": "balanced softmax",
    "ldam_drw": "LDAM-DRW",
    "etf_dr": "fixed ETF + DR",
    "etf_ce": "fixed ETF + CE",
    "bcl": "BCL",
    "crt": "cRT",
    "mislas": "MiSLAS",
    "glmc": "GLMC",
    "glmc_maxnorm": "GLMC + MaxNorm",
    "maxnorm": "MaxNorm + WD (second stage)",
    "paco": "PaCo",
    "bbn": "BBN",
    "gbbn_only": "GBBN only",
    "ce_hycon": "CE + HyCon",
    "ce_p2p": "CE + P2P",
    "allnc_no_hycon": "AllNC - HyCon",
    "allnc_no_p2p": "AllNC - P2P",
    "allnc_no_centre": "AllNC, HyCon uncentred",
    "allnc": "AllNC",
}
_DATASETS = ("cifar100_lt", "cifar10_lt", "fmnist_lt", "imagenet_lt", "inat2018", "places_lt")
KEEP_FROM_METRICS = ("top1", "groups", "ece", "per_class", "class_counts", "epoch", "data", "pipeline", "compile", "device",
                     "world_size", "parameters", "wall_time_s", "git_commit", "source_modified", "sources", "versions", "config", "val",
                     "val_per_class", "val_moved_from_train", "calibration", "display_name")


def split_config_name(config: str) -> tuple[str, str, str]:
    """(dataset prefix, method suffix, preset) of a built-in config name such as
    ``cifar10_lt_allnc_strong`` -> ("cifar10_lt", "allnc", "strong")."""
    for d in _DATASETS:
        if config.startswith(d + "_"):
            rest = config[len(d) + 1:]
            preset = ""
            if rest.endswith("_strong"):
                rest, preset = rest[: -len("_strong")], "strong"
            return d, rest, preset
    return "", config, ""


def method_label(config: str, posthoc: Optional[str] = None) -> str:
    _, m, preset = split_config_name(config)
    name = METHOD_NAMES.get(m, m)
    if posthoc:
        from ..engine.posthoc import CORRECTIONS

        name += " + " + (CORRECTIONS.get(posthoc)[1] if posthoc in CORRECTIONS.names() else posthoc)
    return f"{name} (strong)" if preset else name


def result_record(run_dir: Path, cell: str, extra: Optional[dict] = None) -> dict:
    """The results-file content of a finished run directory (its metrics.json and the last
    epoch's NC figures from metrics.jsonl)."""
    run_dir = Path(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    config, overrides = parse_cell_name(cell)
    rec: dict[str, Any] = {"cell": cell, "config_name": config, "cell_overrides": overrides}
    rec.update({k: metrics[k] for k in KEEP_FROM_METRICS if k in metrics})
    nc = None
    hist = run_dir / "metrics.jsonl"
    if hist.is_file():
        for line in hist.read_text().splitlines():
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if isinstance(r, dict) and r.get("nc") and r.get("epoch") == metrics.get("epoch"):
                nc = r["nc"]
    rec["nc_train"] = nc
    # where the test errors go (the confusion matrix itself is K x K: too big to keep at K = 1000)
    if metrics.get("confusion") is not None and metrics.get("class_counts") is not None:
        rec["errors"] = error_summary(metrics["confusion"], metrics["class_counts"])
    base = (metrics.get("config") or {}).get("init_from")
    if base and (Path(base) / "metrics.json").is_file():
        # a run that starts from another (cRT, MiSLAS and MaxNorm train a classifier on a
        # finished run's backbone) belongs to the table of the run it starts from
        b = json.loads((Path(base) / "metrics.json").read_text())
        rec["table_epochs"] = int(b["config"]["train"]["epochs"])
    method = cell_posthoc(cell)
    if method:
        # a post-hoc cell: the corrected classifier's test figures replace the run's own; its
        # NC figures were not measured
        ph = json.loads((run_dir / f"posthoc_{method}.json").read_text())
        rec.pop("errors", None)  # the run's own errors, not the corrected classifier's
        rec["ece"] = ph["test"].get("ece")  # the corrected classifier's calibration, where posthoc measured it
        rec.update(top1=ph["test"]["top1"], groups=ph["test"]["groups"], per_class=ph["test"].get("per_class"),
                   nc_train=None, posthoc={k: ph[k] for k in ("method", "tau", "tau_grid", "val_top1_by_tau", "val_top1",
                                                              "validation", "run_test", "notes") if k in ph})
    rec.update(extra or {})
    return rec


def posthoc_record(run_dir: Path, run_cell: str, method: str, device: str = "auto",
                   extra: Optional[dict] = None) -> tuple[str, dict, dict]:
    """Correct a finished run post hoc (``allnc posthoc``) and give (its cell, its results
    record, what ``posthoc`` returned); the cell is ``<run_cell>__posthoc_<method>``."""
    from ..engine.posthoc import posthoc

    r = posthoc(run_dir, method, device=device)
    cell = f"{run_cell}__posthoc_{method}"
    return cell, result_record(run_dir, cell, extra), r


def load_results(folder: Path) -> list[dict]:
    folder = Path(folder)
    out = []
    for p in sorted(folder.glob("*.json")):
        rec = json.loads(p.read_text())
        if isinstance(rec, dict) and "cell" in rec:
            if rec["cell"] != p.stem:
                raise ValueError(f"{p} holds the result of cell {rec['cell']!r}; a results file is named after its cell")
            out.append(rec)
    return out


def mean_std(vals: list[float]) -> str:
    if not vals:
        return "–"
    m = sum(vals) / len(vals)
    if len(vals) == 1:
        return f"{m:.2f}"
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))
    return f"{m:.2f} ± {sd:.2f}"


def table_id(rec: dict) -> str:
    """Which table a result belongs to: dataset, preset, imbalance factor and epochs (for a
    run started from another, ``table_epochs``: the epochs of that run)."""
    dataset, _, preset = split_config_name(rec["config_name"])
    cfg = rec["config"]
    f = float(cfg["data"]["imbalance_factor"])
    tid = f"{dataset}_if{f:g}_e{int(rec.get('table_epochs') or cfg['train']['epochs'])}"
    return tid + ("_strong" if preset else "")


def _nc_mean(rs: list[dict], key: str) -> str:
    """Seed mean of one final NC figure on the training features ("–" where none has it)."""
    v = [r["nc_train"][key] for r in rs if r.get("nc_train") and r["nc_train"].get(key) is not None]
    return f"{sum(v) / len(v):.3f}" if v else "–"


def render_table(records: list[dict]) -> str:
    """One markdown table: a row per method (config), mean ± std over the seeds present;
    NC1 (class-balanced) and the mean pairwise cosine of the medium group's classifier
    vectors and centred class means (towards 1: minority collapse), seed means of the final
    model's training features."""
    order = list(METHOD_NAMES)
    rows: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        rows.setdefault((r["config_name"], cell_posthoc(r["cell"]) or ""), []).append(r)

    def key(row: tuple[str, str]) -> tuple[int, str, str]:
        m = split_config_name(row[0])[1]
        return (order.index(m) if m in order else len(order), row[0], row[1])

    data_label = sorted({r.get("data_label") or r.get("data", "") for r in records})
    devices = sorted({r.get("device", "") for r in records})
    # the head-ward share of the test errors (beside its even-spread value) and the test ECE:
    # columns where every trained run of the table has them (a post-hoc cell's classifier is not
    # the run's: it has no errors field, and an ECE only where posthoc measured it), so that a
    # column compares every row or is left out
    own = [r for r in records if not cell_posthoc(r["cell"])]
    errors = bool(own) and all(r.get("errors") for r in own)
    ece = bool(own) and all(r.get("ece") is not None for r in own)
    lines = [f"Data: {'; '.join(data_label)}. Device: {'; '.join(devices)}.", "",
             "| method | seeds | top-1 | many | medium | few | NC1 (cb) | cos w medium | cos mu medium | "
             + ("ECE % | " if ece else "") + ("head-ward errors % (even) | " if errors else "") + "wall s | cells |",
             "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if ece else "") + ("---|" if errors else "")]
    for c in sorted(rows, key=key):
        rs = sorted(rows[c], key=lambda r: r["cell"])
        top1 = mean_std([r["top1"] for r in rs])
        grp = [mean_std([r["groups"][g] for r in rs if r["groups"].get(g) is not None]) for g in ("many", "medium", "few")]
        nc1s, cw, cm = (_nc_mean(rs, k) for k in ("nc1_cb", "medium_w_cos", "medium_means_cos"))
        wall = f"{sum(r['wall_time_s'] for r in rs) / len(rs):.0f}"
        seeds = ", ".join(str(r["config"]["seed"]) for r in rs)
        cells = ", ".join(f"`{r['cell']}`" for r in rs)
        cal = head = ""
        if ece:
            cal = f"{mean_std([r['ece'] for r in rs if r.get('ece') is not None])} | "
        if errors:
            e = [r["errors"] for r in rs if r.get("errors") and r["errors"].get("headward") is not None]
            head = (f"{mean_std([x['headward'] for x in e])} ({sum(x['headward_if_even'] for x in e) / len(e):.1f}) | "
                    if e else "– | ")
        lines.append(f"| {method_label(c[0], c[1] or None)} | {seeds} | {top1} | {' | '.join(grp)} | {nc1s} | {cw} | {cm} | "
                     f"{cal}{head}{wall} | {cells} |")
    return "\n".join(lines) + "\n"


def render_tables(records: Iterable[dict]) -> dict[str, str]:
    by: dict[str, list[dict]] = {}
    for r in records:
        by.setdefault(table_id(r), []).append(r)
    return {tid: render_table(rs) for tid, rs in sorted(by.items())}


@functools.lru_cache(maxsize=None)
def _block_re(tag: str) -> re.Pattern:
    """``<!-- TAG:ID -->`` ... ``<!-- /TAG -->``: a block of generated text in a markdown file."""
    return re.compile(rf"(<!-- {tag}:(?P<id>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /{tag} -->)", re.S)


def update_markdown(text: str, tables: dict[str, str], tag: str = "results",
                    missing: Optional[str] = "No results yet.\n") -> str:
    """Replace the body of every ``<!-- TAG:ID -->`` ... ``<!-- /TAG -->`` block (TAG
    ``results``: the README's tables) by the table ID. A block whose table is absent gets
    ``missing`` (for results: it has none yet); with ``missing=None`` that is an error
    (``KeyError`` naming the known tables)."""

    def sub(m: re.Match) -> str:
        body = tables.get(m.group("id"), missing)
        if body is None:
            raise KeyError(f"no {tag} table {m.group('id')!r} (known: {', '.join(sorted(tables))})")
        return m.group(1) + body + m.group(4)

    return _block_re(tag).sub(sub, text)


def markdown_blocks(text: str, tag: str = "results") -> list[str]:
    return [m.group("id") for m in _block_re(tag).finditer(text)]

"""Run report and comparison: every PNG is written, valid, and referenced in the markdown."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from allnc.errors import RunDirError
from allnc.metrics import (
    AccuracyAccumulator,
    ClassStatsAccumulator,
    NCMAccumulator,
    compute_nc,
    cosine_matrices,
    nc_summary,
    save_nc,
)
from allnc.report import compare_runs, write_report

K, D = 8, 12
TRAIN_COUNTS = [300, 180, 120, 90, 50, 25, 12, 6]  # many 3 / medium 3 / few 2


def _features(n_per, rng, spread, mu=None):
    mu = rng.standard_normal((K, D)) * 2 if mu is None else mu
    y = np.repeat(np.arange(K), n_per)
    h = np.maximum(mu[y] + spread * rng.standard_normal((len(y), D)) + 1.0, 0)
    return mu, h, y


def _nc_of(h, y, W, b, class_counts):
    acc = ClassStatsAccumulator(K, D, class_counts=class_counts, train_counts=TRAIN_COUNTS)
    for s in range(0, len(y), 256):
        acc.update(torch.as_tensor(h[s:s + 256]), torch.as_tensor(y[s:s + 256]))
    st = acc.result()
    ncm = NCMAccumulator(st, W, b)
    ncm.update(torch.as_tensor(h), torch.as_tensor(y))
    return st, compute_nc(st, W, b, TRAIN_COUNTS, ncm=ncm), cosine_matrices(st, W)


def make_run(run_dir: Path, seed: int = 0, with_nc: bool = True, epochs: int = 5) -> Path:
    rng = np.random.default_rng(seed)
    run_dir.mkdir(parents=True)
    mu, h, y = _features(TRAIN_COUNTS, rng, 0.8)
    W = mu - mu.mean(0) + 0.3 * rng.standard_normal((K, D))
    b = 0.1 * rng.standard_normal(K)
    # per-epoch log: loss, lr, test_top1 and (every other epoch) NC figures
    lines = []
    for e in range(epochs):
        rec = {"epoch": e + 1, "loss": 2.0 / (e + 1), "lr": 0.1 * 0.5 ** e, "test_top1": 40 + 5 * e + seed}
        if e % 2 == 0:
            _, nc_e, _ = _nc_of(h * (1 + 0.1 * e), y, W, b, np.bincount(y, minlength=K))
            # the engine may log the full dict or its flat summary: both are accepted
            rec["nc"] = nc_e if e == 0 else nc_summary(nc_e)
        lines.append(json.dumps(rec))
    lines.append('{"epoch": 99, "loss": ')  # a partial line of a run in progress
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    # final test evaluation
    _, ht, yt = _features([20] * K, rng, 1.5, mu=mu)
    acc = AccuracyAccumulator(K)
    logits = torch.as_tensor(ht) @ torch.as_tensor(W).T + torch.as_tensor(b)
    acc.update(logits, torch.as_tensor(yt))
    res = acc.result(TRAIN_COUNTS)
    res["class_counts"] = TRAIN_COUNTS
    res["config"] = {"name": f"fake{seed}", "method": {"name": "ce"},
                     "data": {"name": "cifar10", "imbalance_factor": 50.0, "augment": "standard"},
                     "model": {"name": "resnet32", "width": 16}, "train": {"epochs": epochs}}
    (run_dir / "metrics.json").write_text(json.dumps(res))
    if with_nc:
        _, nc_tr, cos_tr = _nc_of(h, y, W, b, np.bincount(y, minlength=K))
        _, nc_te, cos_te = _nc_of(ht, yt, W, b, np.bincount(yt, minlength=K))
        save_nc(run_dir, {"train": nc_tr, "test": nc_te}, {"train": cos_tr, "test": cos_te})
    return run_dir


def _check_pngs(md_path: Path, expected: set[str]):
    text = md_path.read_text()
    pngs = {p.name for p in md_path.parent.glob("*.png")}
    assert expected <= pngs, expected - pngs
    refs = set(re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", text))
    for name in pngs:
        assert name in refs, f"{name} is not referenced in {md_path.name}"
        p = md_path.parent / name
        assert p.stat().st_size > 0
        with Image.open(p) as im:
            assert im.format == "PNG"
            im.verify()
        with Image.open(p) as im:
            w, h = im.size
            assert w > 100 and h > 100
    for r in refs:
        assert (md_path.parent / r).is_file(), r
    return text


def test_report_writes_every_png(tmp_path):
    run = make_run(tmp_path / "run_a")
    nc = json.loads((run / "nc.json").read_text())
    assert set(nc) == {"train", "test"}
    with np.load(run / "nc.npz") as z:
        assert {"train_means_cos", "train_w_cos", "train_cross_cos"} <= set(z.files)
    md = write_report(run)
    assert md == run / "report" / "report.md"
    text = _check_pngs(md, {"per_class_acc.png", "curves.png", "nc_epochs.png", "cos_train.png",
                            "cos_test.png", "norms_train.png"})
    assert "| top-1 | many | medium | few |" in text
    assert "(3 classes)" in text and "(2 classes)" in text
    assert "NC1 class-balanced" in text and "allnc nc" not in text
    assert "unreadable line" in text  # the partial last line was skipped and said so
    assert "fake0" in text and "resnet32" in text


def test_report_without_nc_says_which_command(tmp_path):
    run = make_run(tmp_path / "run_b", with_nc=False)
    md = write_report(run)
    text = _check_pngs(md, {"per_class_acc.png", "curves.png", "nc_epochs.png"})
    assert f"`allnc nc {run}`" in text
    assert not list((run / "report").glob("cos_*.png"))


def test_report_of_a_bare_run_dir(tmp_path):
    with pytest.raises(RunDirError):
        write_report(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirError):
        write_report(tmp_path / "empty")
    # only metrics.json: everything else is skipped with a line
    run = tmp_path / "only_metrics"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"top1": 50.0, "groups": {"many": 60.0, "medium": None, "few": None},
                                                  "per_class": [60.0, 40.0], "class_counts": [500, 200]}))
    text = _check_pngs(write_report(run), {"per_class_acc.png"})
    assert "metrics.jsonl not found" in text and "allnc nc" in text
    assert "| 50.00 | 60.00 | – | – |" in text


def test_compare_runs(tmp_path):
    a = make_run(tmp_path / "x" / "run", seed=1)
    b = make_run(tmp_path / "y" / "run", seed=2, with_nc=False)
    md = compare_runs([a, b], tmp_path / "cmp")
    text = _check_pngs(md, {"compare_curves.png"})
    rows = [l for l in text.splitlines() if l.startswith("| x/run") or l.startswith("| y/run")]
    assert len(rows) == 2  # same directory names are told apart by their parents
    m = json.loads((a / "metrics.json").read_text())
    assert f"| {m['top1']:.2f} |" in rows[0]
    assert rows[1].count("–") >= 8  # no nc.json: NC cells are empty
    assert "NC1 cb" in text

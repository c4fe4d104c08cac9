"""Run report and comparison: every PNG is written, valid, and referenced in the markdown."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from matplotlib.transforms import Bbox

from allnc.errors import RunDirError
from allnc.metrics.accuracy import GROUP_NAMES
from allnc.metrics import (
    AccuracyAccumulator,
    CalibrationAccumulator,
    ClassStatsAccumulator,
    NCMAccumulator,
    compute_nc,
    cosine_matrices,
    SUMMARY_KEYS,
    nc_summary,
    save_nc,
)
from allnc.report import compare_runs, plots, write_report

K, D = 8, 12
TRAIN_COUNTS = [300, 180, 120, 90, 50, 25, 12, 6]  # many 3 / medium 3 / few 2


def _features(n_per, rng, spread, mu=None):
    mu = rng.standard_normal((K, D)) * 2 if mu is None else mu
    y = np.repeat(np.arange(K), n_per)
    h = np.maximum(mu[y] + spread * rng.standard_normal((len(y), D)) + 1.0, 0)
    return mu, h, y


def _nc_of(h, y, W, b, class_counts, train_counts=TRAIN_COUNTS):
    acc = ClassStatsAccumulator(K, D, class_counts=class_counts, train_counts=train_counts)
    for s in range(0, len(y), 256):
        acc.update(torch.as_tensor(h[s:s + 256]), torch.as_tensor(y[s:s + 256]))
    st = acc.result()
    ncm = NCMAccumulator(st, W, b)
    ncm.update(torch.as_tensor(h), torch.as_tensor(y))
    return st, compute_nc(st, W, b, train_counts, ncm=ncm), cosine_matrices(st, W)


def make_run(run_dir: Path, seed: int = 0, with_nc: bool = True, epochs: int = 5,
             counts=TRAIN_COUNTS, classes=None, val: bool = False) -> Path:
    rng = np.random.default_rng(seed)
    run_dir.mkdir(parents=True)
    mu, h, y = _features(counts, rng, 0.8)
    W = mu - mu.mean(0) + 0.3 * rng.standard_normal((K, D))
    b = 0.1 * rng.standard_normal(K)
    # per-epoch log: loss, lr, test_top1 and (every other epoch) NC figures
    lines = []
    for e in range(epochs):
        rec = {"epoch": e + 1, "loss": 2.0 / (e + 1), "lr": 0.1 * 0.5 ** e, "test_top1": 40 + 5 * e + seed}
        if e % 2 == 0:
            _, nc_e, _ = _nc_of(h * (1 + 0.1 * e), y, W, b, np.bincount(y, minlength=K), counts)
            # the engine may log the full dict or its flat summary: both are accepted
            rec["nc"] = nc_e if e == 0 else nc_summary(nc_e)
        rec["test_groups"] = {"many": 50 + e, "medium": 30 + 2 * e, "few": 10 + 3 * e if min(counts) < 20 else None}
        if val:
            rec["val_top1"] = 45 + 4 * e
            rec["val_groups"] = {"many": 55 + e, "medium": 35 + e, "few": None}
        lines.append(json.dumps(rec))
    lines.append('{"epoch": 99, "loss": ')  # a partial line of a run in progress
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    # final test evaluation
    _, ht, yt = _features([20] * K, rng, 1.5, mu=mu)
    acc = AccuracyAccumulator(K)
    logits = torch.as_tensor(ht) @ torch.as_tensor(W).T + torch.as_tensor(b)
    acc.update(logits, torch.as_tensor(yt))
    res = acc.result(counts)
    cal = CalibrationAccumulator()
    cal.update(torch.softmax(logits.float(), 1), torch.as_tensor(yt))
    res.update(cal.result())
    res["class_counts"] = list(counts)
    if classes is not None:
        res["classes"] = list(classes)
    res["config"] = {"name": f"fake{seed}", "method": {"name": "ce"},
                     "data": {"name": "cifar10", "imbalance_factor": 50.0, "augment": "standard"},
                     "model": {"name": "resnet32", "width": 16}, "train": {"epochs": epochs}}
    (run_dir / "metrics.json").write_text(json.dumps(res))
    if with_nc:
        _, nc_tr, cos_tr = _nc_of(h, y, W, b, np.bincount(y, minlength=K), counts)
        _, nc_te, cos_te = _nc_of(ht, yt, W, b, np.bincount(yt, minlength=K), counts)
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
                            "cos_test.png", "norms_train.png", "norms_test.png", "errors.png", "reliability.png"})
    assert "| split | top-1 | many | medium | few |" in text
    # where the errors go: the figures of the run's own confusion matrix
    from allnc.metrics import group_confusion, headward_errors

    m = json.loads((run / "metrics.json").read_text())
    hw, gc = headward_errors(m["confusion"], TRAIN_COUNTS), group_confusion(m["confusion"], TRAIN_COUNTS)
    assert f"Of the {hw['errors']} misclassified test images, {hw['all']:.2f}% were predicted as a class" in text
    assert f"{hw['uniform']:.2f}% would be" in text
    assert "| few | " + " | ".join(f"{gc['shares']['few'][h]:.2f}" for h in GROUP_NAMES) + " |" in text
    assert "(3 classes)" in text and "(2 classes)" in text
    # calibration: the run's ECE and the share of images in over-confident bins
    full = [b for b in m["reliability"] if b["count"]]
    over = sum(b["count"] for b in full if b["confidence"] > b["accuracy"]) / sum(b["count"] for b in full)
    assert f"Expected calibration error {m['ece']:.2f}% over 15 confidence bins. {100 * over:.0f}% of the test" in text
    assert 0 < over < 1
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
    assert "| test | 50.00 | 60.00 (2 classes) | no class in this group | no class in this group |" in text


def test_compare_runs(tmp_path):
    a = make_run(tmp_path / "x" / "run", seed=1)
    b = make_run(tmp_path / "y" / "run", seed=2, with_nc=False)
    md = compare_runs([a, b], tmp_path / "cmp")
    text = _check_pngs(md, {"compare_curves.png"})
    first_table = text.split("## Where the errors go")[0]
    rows = [l for l in first_table.splitlines() if l.startswith("| x/run") or l.startswith("| y/run")]
    assert len(rows) == 2  # same directory names are told apart by their parents
    m = json.loads((a / "metrics.json").read_text())
    assert f"| {m['top1']:.2f} |" in rows[0]
    assert rows[1].count("–") >= 5  # no nc.json: NC cells are empty
    assert "NC1 cb" in text
    # where the errors go: each run's head-ward share from its own confusion matrix
    from allnc.metrics import headward_errors

    errors = text.split("## Where the errors go (test)")[1].split("## Calibration")[0]
    calibration = text.split("## Calibration")[1].split("## Minority collapse")[0]
    for name, run in (("x/run", a), ("y/run", b)):
        m = json.loads((run / "metrics.json").read_text())
        hw = headward_errors(m["confusion"], TRAIN_COUNTS)
        assert (f"| {name} | {hw['errors']} | {hw['all']:.2f} | {hw['uniform']:.2f} | "
                + " | ".join(f"{hw['groups'][g]:.2f}" for g in GROUP_NAMES) + " |") in errors
        assert f"| {name} | {m['ece']:.2f} | – |" in calibration  # no validation split


def test_compare_refuses_a_run_twice_and_an_out_that_is_a_run(tmp_path):
    a = make_run(tmp_path / "x" / "run", seed=1)
    b = make_run(tmp_path / "y" / "run", seed=2)
    with pytest.raises(RunDirError, match="given twice"):
        compare_runs([a, tmp_path / "x" / ".." / "x" / "run"], tmp_path / "cmp")
    before = sorted(p.name for p in b.iterdir())
    with pytest.raises(RunDirError, match=f"--out {b} is a run directory"):
        compare_runs([a, b], b)
    assert sorted(p.name for p in b.iterdir()) == before and not (tmp_path / "cmp").exists()


# ---------------------------------------------------------------- groups, class names, figures
NO_FEW = [300, 180, 120, 90, 50, 25, 40, 30]  # many 3 / medium 5 / few none (like Fashion-MNIST-LT)
NAMES = ["T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker"]


def _group_row(text: str, first: str, group: str) -> list[str]:
    rows = [l for l in text.splitlines() if l.startswith(f"| {first}") and f"| {group} |" in l]
    assert len(rows) == 1, (group, rows)
    return [c.strip() for c in rows[0].strip("|").split("|")]


def _expected_cells(entry: dict) -> list[str]:
    from allnc.report.runreport import GROUP_COLUMNS, fmt

    return [fmt(entry.get(k)) for _, k in GROUP_COLUMNS]


def test_report_shows_every_nonempty_group_and_names_the_empty_one(tmp_path):
    run = make_run(tmp_path / "nofew", counts=NO_FEW)
    nc = json.loads((run / "nc.json").read_text())
    assert nc["train"]["groups"]["few"]["num_classes"] == 0
    text = write_report(run).read_text()
    for split in ("train", "test"):
        section = text.split(f"### Minority collapse by group ({split} features)")[1].split("###")[0]
        for g, n in (("many", 3), ("medium", 5)):
            cells = _group_row(section, g, g)
            assert cells[1] == str(n)
            assert cells[2:] == _expected_cells(nc[split]["groups"][g])
        assert "few: no class in this group" in section
        assert not any(l.startswith("| few") for l in section.splitlines())  # no row of dashes
        ratio = nc[split]["groups"]["norm_ratios"]["w_many_over_medium"]
        assert f"‖w‖ many/medium {ratio:.3g}" in section
        assert "many/few" not in section
    # the accuracy table says so too
    assert "| no class in this group |" in text
    # where the errors go: no row and no column for the group without classes
    errors = text.split("## Where the errors go (test)")[1].split("##")[0]
    assert "| true group | predicted many | predicted medium |\n" in errors and "few" not in errors


def test_compare_shows_the_medium_group_of_a_run_without_few(tmp_path):
    a = make_run(tmp_path / "a", counts=NO_FEW, seed=1)
    b = make_run(tmp_path / "b", seed=2)
    text = compare_runs([a, b], tmp_path / "cmp").read_text()
    nc_a = json.loads((a / "nc.json").read_text())["train"]["groups"]
    nc_b = json.loads((b / "nc.json").read_text())["train"]["groups"]
    section = text.split("## Minority collapse by group")[1]
    for g in ("many", "medium"):
        assert _group_row(section, "a", g)[3:] == _expected_cells(nc_a[g])
    for g in ("many", "medium", "few"):
        assert _group_row(section, "b", g)[3:] == _expected_cells(nc_b[g])
    assert "**a**, few: no class in this group" in section
    assert not any(l.startswith("| a | few") for l in section.splitlines())
    row_a = [l for l in text.split("## Minority")[0].splitlines() if l.startswith("| a |")][0]
    assert "no class in this group" in row_a  # few accuracy of run a


class _Figures:
    """Record every figure the plots save (by file name)."""

    def __init__(self, monkeypatch):
        from allnc.report import plots

        self.figs = {}
        orig = plots._save

        def save(fig, path):
            self.figs[Path(path).name] = fig
            return orig(fig, path)

        monkeypatch.setattr(plots, "_save", save)

    @staticmethod
    def ticks(ax, axis="x"):
        return [t.get_text() for t in (ax.get_xticklabels() if axis == "x" else ax.get_yticklabels())]

    @staticmethod
    def legend(ax):
        leg = ax.get_legend()
        return [t.get_text() for t in leg.get_texts()] if leg else []


def test_plots_use_class_names_from_metrics_json(tmp_path, monkeypatch):
    rec = _Figures(monkeypatch)
    run = make_run(tmp_path / "named", classes=NAMES)
    text = write_report(run).read_text()
    order = np.argsort(-np.asarray(TRAIN_COUNTS), kind="stable")
    want = [NAMES[c] for c in order]
    ax = rec.figs["per_class_acc.png"].axes[0]
    assert rec.ticks(ax) == want
    assert not ax.texts  # the group labels are in the legend, not drawn over the bars
    assert any(t.startswith("many (3 classes): mean") for t in rec.legend(ax))
    for name in ("cos_train.png", "cos_test.png"):
        assert rec.ticks(rec.figs[name].axes[0]) == want and rec.ticks(rec.figs[name].axes[0], "y") == want
    for name in ("norms_train.png", "norms_test.png"):
        ax = rec.figs[name].axes[0]
        assert {t.get_text() for t in ax.texts} == set(NAMES)
        legend = [t.get_text() for leg in rec.figs[name].legends for t in leg.get_texts()]
        assert any("group boundaries" in t for t in legend)  # the dashed lines are explained
    assert "| T-shirt (0) | 300 | many |" in text and "shown by index" not in text


def test_plots_fall_back_to_indices_with_a_note(tmp_path, monkeypatch):
    rec = _Figures(monkeypatch)
    text = write_report(make_run(tmp_path / "plain")).read_text()
    assert "classes are shown by index: this run's metrics.json has no `classes` list" in text
    ax = rec.figs["per_class_acc.png"].axes[0]
    assert rec.ticks(ax) == [str(c) for c in np.argsort(-np.asarray(TRAIN_COUNTS), kind="stable")]
    assert ax.get_xlabel().startswith("class index")


def test_curves_draw_groups_and_validation(tmp_path, monkeypatch):
    rec = _Figures(monkeypatch)
    write_report(make_run(tmp_path / "val", counts=NO_FEW, val=True))
    axes = {ax.get_title(): ax for ax in rec.figs["curves.png"].axes}
    test_ax = axes["test accuracy: top-1 and group means"]
    val_ax = axes["validation accuracy: top-1 and group means"]
    for ax in (test_ax, val_ax):
        leg = rec.legend(ax)
        assert {"top-1", "many", "medium"} <= set(leg) and "few: no class in this group" in leg
        assert ax.get_ylabel() == "accuracy (%)"
    a = make_run(tmp_path / "c1", seed=1, val=True)
    b = make_run(tmp_path / "c2", counts=NO_FEW, seed=2)
    compare_runs([a, b], tmp_path / "cmp")
    titles = [ax.get_title() for ax in rec.figs["compare_curves.png"].axes]
    for t in ("top-1 accuracy (%)", "many group: mean accuracy (%)", "medium group: mean accuracy (%)",
              "few group: mean accuracy (%)", "NC1 class-balanced (train features)"):
        assert t in titles
    top = rec.figs["compare_curves.png"].axes[titles.index("top-1 accuracy (%)")]
    assert set(rec.legend(top)) == {"c1", "c1 (validation)", "c2"}
    few = rec.figs["compare_curves.png"].axes[titles.index("few group: mean accuracy (%)")]
    assert "c2: no class in this group" in rec.legend(few)


def test_run_label_names_the_run_and_tells_the_fast_model_apart():
    from allnc.config import load_config, to_dict
    from allnc.report.runreport import run_label

    fast = run_label(to_dict(load_config("fmnist_lt_allnc_fast")))
    full = run_label(to_dict(load_config("fmnist_lt_allnc")))
    assert fast.startswith("AllNC (fast), config fmnist_lt_allnc_fast, method gbbn")
    assert "resnet_small w16 stem stride 2, 16 epochs" in fast
    assert full.startswith("AllNC, config fmnist_lt_allnc, method gbbn")
    assert "resnet_small w16, 12 epochs" in full and "stride" not in full


def test_every_nc_panel_curve_is_a_logged_summary_key(tmp_path):
    """The NC-over-epochs picture draws keys of the per-epoch summary: a panel key that
    ``nc_summary`` never logs would stay an empty curve (the many/medium norm ratios did)."""
    from allnc.report.plots import NC_PANELS

    drawn = {k for _, keys, _ in NC_PANELS for k, _ in keys}
    assert drawn - set(SUMMARY_KEYS) == set()
    run = make_run(tmp_path / "nofew", counts=NO_FEW)
    nc = json.loads((run / "nc.json").read_text())["train"]
    summary = nc_summary(nc)
    ratios = nc["groups"]["norm_ratios"]
    assert summary["w_norm_ratio_many_medium"] == pytest.approx(ratios["w_many_over_medium"])
    assert summary["means_norm_ratio_many_medium"] == pytest.approx(ratios["means_many_over_medium"])
    assert summary["w_norm_ratio_many_few"] is None  # no few class: nothing to divide by


def test_characters_the_font_lacks_are_one_note_per_picture(tmp_path, capsys):
    """Class names in Chinese: matplotlib's default font has none of their glyphs and warns
    once per character; the command line says it once per picture, naming the characters."""
    from allnc.cli import main

    names = ["猫", "犬", "鳥", "魚", "馬", "牛", "羊", "豚"]
    run = make_run(tmp_path / "cjk", classes=names)
    assert main(["report", str(run)]) == 0
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if line.startswith("allnc: note:")]
    assert sorted(n.split(":")[2].strip() for n in notes) == sorted(
        ["per_class_acc.png", "cos_train.png", "cos_test.png", "norms_train.png", "norms_test.png", "errors.png"])
    assert all("no glyph for 8 character(s)" in n and "猫, 犬, 鳥, 魚, 馬 ..." in n for n in notes)
    assert "Glyph" not in err and len(err.splitlines()) == len(notes)


def test_compare_shows_validation_accuracy_and_a_run_that_never_read_the_test_set(tmp_path):
    a = make_run(tmp_path / "a", seed=1)
    b = make_run(tmp_path / "b", seed=2)
    m = json.loads((b / "metrics.json").read_text())
    val = {"top1": 61.25, "groups": {"many": 70.5, "medium": 55.0, "few": 40.25}}
    test_free = {k: v for k, v in m.items() if k not in ("top1", "groups", "per_class")}
    (b / "metrics.json").write_text(json.dumps({**test_free, "test_evaluated": False, "val": val}))
    text = compare_runs([a, b], tmp_path / "cmp").read_text()
    first, rest = text.split("## Validation split")
    assert [l for l in first.splitlines() if l.startswith("| b |")][0].startswith(
        "| b | not evaluated (train.eval_test=false) | – | – | – |")
    val_rows = [l for l in rest.split("## Where the errors go")[0].splitlines() if l.startswith("| ")][1:]
    assert val_rows == ["| b | 61.25 | 70.50 (3 classes) | 55.00 (3 classes) | 40.25 (2 classes) |"]
    # a run that never read the test set has no row of test errors
    errors = rest.split("## Where the errors go (test)")[1].split("## Minority")[0]
    assert "| a |" in errors and "| b |" not in errors
    assert "## Validation split" not in compare_runs([a], tmp_path / "cmp1").read_text()


def test_point_names_do_not_overlap_where_points_crowd(tmp_path, monkeypatch):
    """Two classes with nearly the same count and norm (Fashion-MNIST's T-shirt/top and
    Trouser under CE): each name goes where it covers no other name."""
    rec = _Figures(monkeypatch)
    counts = [5700, 5000, 4400, 300, 60]
    names = ["T-shirt/top", "Trouser", "Pullover", "Bag", "Ankle boot"]
    per_class = {"w_norm": [3.12, 3.06, 3.10, 2.3, 1.6], "means_norm": [2.7, 4.3, 2.72, 3.3, 2.7],
                 "train_count": counts}
    plots.plot_norms_vs_size(per_class, tmp_path / "norms.png", class_names=names)
    fig = rec.figs["norms.png"]
    renderer = fig.canvas.get_renderer()
    r = 2 * fig.dpi / 72  # the markers' radius (s=16: 4 points across)
    for ax, k in zip(fig.axes, ("w_norm", "means_norm")):
        boxes = [t.get_window_extent(renderer) for t in ax.texts]
        assert sorted(t.get_text() for t in ax.texts) == sorted(names)
        for i in range(len(boxes)):
            for j in range(i):
                assert plots._overlap(boxes[i], boxes[j]) == 0, (ax.texts[i].get_text(), ax.texts[j].get_text())
        # nor does a name cover a point
        for (px, py) in ax.transData.transform(np.column_stack([counts, per_class[k]])):
            dot = Bbox.from_extents(px - r, py - r, px + r, py + r)
            assert all(plots._overlap(b, dot) == 0 for b in boxes)
    # the naive spot (every name right-above its point) does overlap here, so the test can fail
    ax = fig.axes[0]
    naive = [ax.annotate(n, (c, v), xytext=(3, 3), textcoords="offset points", fontsize=6)
             for n, c, v in zip(names, counts, per_class["w_norm"])]
    nb = [t.get_window_extent(renderer) for t in naive]
    assert any(plots._overlap(nb[i], nb[j]) > 0 for i in range(len(nb)) for j in range(i))

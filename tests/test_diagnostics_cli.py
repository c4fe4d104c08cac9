"""`allnc nc`, `allnc report`, `allnc compare` and per-epoch tracking on tiny CPU runs."""
import json

import numpy as np
import pytest
from PIL import Image

from allnc.cli import main as cli_main
from allnc.config import load_config
from allnc.engine.trainer import Trainer

FAST = ["device=cpu", "train.progress=false", "model.width=8", "train.batch_size=32", "train.warmup_epochs=0",
        "train.schedule=constant", "train.lr=0.05", "data.num_workers=0", "data.imbalance_factor=10"]


@pytest.fixture(scope="module")
def two_runs(tiny_learnable_fmnist, tmp_path_factory):
    root = tmp_path_factory.mktemp("diag")
    runs = {}
    for name in ("ce", "allnc"):
        cfg = load_config(f"fmnist_lt_{name}", [f"data.root={tiny_learnable_fmnist}", *FAST, "train.epochs=4",
                                                 "nc.every=2", "train.eval_every=2"])
        Trainer(cfg, root / name).fit()
        runs[name] = root / name
    return runs


def test_tracking_writes_nc_every_n_epochs(two_runs):
    hist = [json.loads(x) for x in (two_runs["allnc"] / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in hist if "nc" in h] == [2, 4]
    assert all(np.isfinite(h["nc"]["nc1"]) and 0 <= h["nc"]["nc4"] <= 1 for h in hist if "nc" in h)


def test_nc_command_measures_the_inference_features_and_classifier(two_runs, capsys):
    run = two_runs["allnc"]
    assert cli_main(["nc", str(run), "--device", "cpu"]) == 0
    nc = json.loads((run / "nc.json").read_text())
    assert set(nc) == {"train", "test"}
    # GBBN predicts with W on [0.5 h_c ; 0.5 h_r]: the metrics see the 2d-dimensional inference feature
    assert nc["train"]["info"]["dim"] == 2 * 32 and nc["train"]["info"]["num_samples"] == 240
    # NC4's classifier accuracy on the test split is the test accuracy the run reported
    m = json.loads((run / "metrics.json").read_text())
    assert nc["test"]["nc4"]["classifier_acc"] == pytest.approx(m["top1"], abs=1e-6)  # percent
    mats = np.load(run / "nc.npz")
    assert mats["train_w_cos"].shape == (10, 10) and np.allclose(np.diag(mats["train_w_cos"]), 1)
    # the printout gives every non-empty group's minority-collapse figures and names the empty ones
    from allnc.report.runreport import fmt

    out = capsys.readouterr().out
    for split in ("train", "test"):
        part = out.split(f"{split:<5} minority collapse by group")[1].split("minority collapse")[0]
        gb = nc[split]["groups"]
        assert sum(gb[g]["num_classes"] for g in ("many", "medium", "few")) == 10
        for g in ("many", "medium", "few"):
            line = [l for l in part.splitlines() if l.strip().startswith(g)][0]
            if gb[g]["num_classes"] == 0:
                assert "no class in this group" in line
            else:
                assert f"{gb[g]['num_classes']} classes" in line
                assert f"cos w {fmt(gb[g]['w_cos_mean'])}" in line
                assert f"self-duality {fmt(gb[g]['self_duality_cos_mean'])}" in line


def test_report_and_compare_write_every_picture(two_runs, tmp_path):
    for run in two_runs.values():
        assert cli_main(["nc", str(run), "--device", "cpu"]) == 0
        assert cli_main(["report", str(run)]) == 0
        rep = run / "report"
        md = (rep / "report.md").read_text()
        pngs = sorted(rep.glob("*.png"))
        names = {p.name for p in pngs}
        assert {"per_class_acc.png", "curves.png", "nc_epochs.png", "cos_train.png", "cos_test.png"} <= names
        for p in pngs:
            assert p.name in md
            with Image.open(p) as im:
                assert im.format == "PNG" and min(im.size) > 100
    assert cli_main(["compare", str(two_runs["ce"]), str(two_runs["allnc"]), "--out", str(tmp_path / "cmp")]) == 0
    table = (tmp_path / "cmp" / "compare.md").read_text()
    for run in two_runs.values():
        top1 = json.loads((run / "metrics.json").read_text())["top1"]
        assert f"{top1:.2f}" in table
    assert (tmp_path / "cmp" / "compare_curves.png").stat().st_size > 1000


def test_eval_reproduces_the_run_metrics(two_runs, capsys):
    for run in two_runs.values():
        assert cli_main(["eval", str(run), "--device", "cpu", "--json"]) == 0
        res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        m = json.loads((run / "metrics.json").read_text())
        assert res["top1"] == m["top1"] and res["per_class"] == m["per_class"] and res["groups"] == m["groups"]


def test_nc_reports_progress_through_both_passes_of_every_split(two_runs, monkeypatch):
    from allnc.engine import evaluate
    from allnc.engine.context import load_run
    from allnc.engine.evaluate import neural_collapse

    real = evaluate.iter_eval
    monkeypatch.setattr(evaluate, "iter_eval", lambda *a, **k: real(*a, batch_size=32, **k))  # several batches
    t = load_run(two_runs["ce"], device="cpu")
    ticks = iter(range(0, 10**6, 7))  # a clock that moves 7 s per reading
    lines = []
    nc, _ = neural_collapse(t, log=lines.append, every_s=10.0, clock=lambda: next(ticks))
    for split in ("train", "test"):
        n = nc[split]["info"]["num_samples"]
        for p in (1, 2):
            mine = [l for l in lines if l.startswith(f"nc {split}: pass {p}/2")]
            # the last line of a pass says it is done and counts every image of the split
            assert mine and mine[-1].endswith(" s") and f"{n}/{n} images, done in" in mine[-1]
            # batches of 32 and a 7-s clock: the 10-s mark is crossed inside the pass
            counts = [int(l.split(": ")[2].split("/")[0]) for l in mine[:-1]]
            assert counts and counts == sorted(counts) and all(0 < c <= n and (c % 32 == 0 or c == n) for c in counts)
    assert sum("done in" in l for l in lines) == 4


def test_nc4_of_the_test_split_uses_the_training_class_means(two_runs):
    """The NCM rule is the classifier of the TRAINING means (docs/metrics.md), for the test
    split too, whether the training split is measured in the same call or not."""
    import torch

    from allnc.engine import loaders
    from allnc.engine.context import load_run
    from allnc.engine.evaluate import neural_collapse

    t = load_run(two_runs["allnc"], device="cpu")
    t.method.eval()

    def feats(split):
        hs, ys, zs = [], [], []
        with torch.no_grad():
            for x, y in loaders.iter_eval(t.cfg, t.bundle, split, t.choice, t.device):
                h, z = t.method.features(x)
                hs.append(h.double()), ys.append(y), zs.append(z)
        return torch.cat(hs), torch.cat(ys), torch.cat(zs)

    htr, ytr, _ = feats("train")
    means = torch.stack([htr[ytr == c].mean(0) for c in range(t.bundle.num_classes)])
    hte, yte, zte = feats("test")
    own = torch.stack([hte[yte == c].mean(0) for c in range(t.bundle.num_classes)])
    assert not torch.allclose(own, means, atol=1e-3)
    ncm = torch.cdist(hte, means).argmin(1)
    want_nc4 = float((ncm != zte.argmax(1)).double().mean())
    want_acc = 100 * float((ncm == yte).double().mean())
    from allnc.engine import evaluate

    given = []
    real = evaluate.NCMAccumulator

    def spy(means, *a, **k):
        given.append(means.means.clone())
        return real(means, *a, **k)

    for splits in (("train", "test"), ("test",), ("test", "train")):
        given.clear()
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(evaluate, "NCMAccumulator", spy)
            nc, _ = neural_collapse(t, splits=splits)
        # every NCM rule got the training means (the test's own differ: this can fail)
        assert len(given) == len(splits) and all(torch.allclose(g, means, atol=1e-5) for g in given)
        assert list(nc) == list(splits)
        assert nc["test"]["nc4"]["nc4"] == pytest.approx(want_nc4, abs=1e-9)
        assert nc["test"]["nc4"]["ncm_acc"] == pytest.approx(want_acc, abs=1e-7)

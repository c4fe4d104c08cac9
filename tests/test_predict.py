"""allnc predict / allnc export (allnc.engine.predict) on a tiny run trained here."""
import csv
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from allnc.cli import main
from allnc.engine.context import load_run
from allnc.engine.evaluate import evaluate_accuracy
from allnc.engine.predict import folder_name, load_model, predict
from allnc.errors import RunDirError


@pytest.fixture(scope="module")
def run(tiny_learnable_fmnist, tmp_path_factory):
    out = tmp_path_factory.mktemp("predict") / "run"
    assert main(["train", "--config", "fmnist_lt_ce", "--out", str(out), f"data.root={tiny_learnable_fmnist}",
                 "device=cpu", "train.progress=false", "model.width=8", "train.batch_size=32", "train.epochs=1",
                 "data.num_workers=0", "data.imbalance_factor=10"]) == 0
    return out


@pytest.fixture(scope="module")
def test_split(run):
    """The run's own test split and its own evaluation of it."""
    ctx = load_run(run, device="cpu")
    return ctx.bundle, evaluate_accuracy(ctx)


def cli(argv, capsys, code=0):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert rc == code, (out, err)
    return out, err


def test_predictions_on_the_test_split_equal_the_runs_evaluation(run, test_split, tiny_image_folder, tmp_path,
                                                                   capsys):
    bundle, ev = test_split
    te = bundle.test
    tiny_image_folder(tmp_path, "imgs", te.images, te.targets, [folder_name(c) for c in bundle.classes])  # PNG
    out, _ = cli(["predict", run, tmp_path / "imgs", "--out", tmp_path / "p.csv", "--device", "cpu",
                  "--batch-size", "37", "--topk", "3"], capsys)
    assert f"{len(te)} images" in out and "top-1" in out
    res = json.loads((tmp_path / "p.json").read_text())
    for key in ("top1", "per_class", "per_class_counts", "groups", "group_sizes", "confusion"):
        assert res[key] == ev[key], key  # same per-class predictions (the confusion matrix)
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert len(rows) == len(te) and list(rows[0]) == ["path", "label", "top1", "top1_prob", "top2", "top2_prob",
                                                      "top3", "top3_prob"]
    assert {r["label"] for r in rows} == set(bundle.classes) and all(r["top1"] in bundle.classes for r in rows)
    assert all(float(r["top1_prob"]) >= float(r["top2_prob"]) >= float(r["top3_prob"]) for r in rows)


def test_a_run_without_the_saved_class_names_rebuilds_them_and_says_so(run, test_split, tmp_path, capsys):
    old = tmp_path / "old"
    shutil.copytree(run, old)
    m = json.loads((old / "metrics.json").read_text())
    del m["preprocessing"]
    (old / "metrics.json").write_text(json.dumps(m))
    img = tmp_path / "one.png"
    Image.fromarray(test_split[0].test.images[0, :, :, 0]).save(img)
    assert predict(old, img, device="cpu")[0]["topk"] == predict(run, img, device="cpu")[0]["topk"]
    assert capsys.readouterr().err.count("lacks preprocessing") == 1


def test_export_gives_the_same_logits_and_holds_no_pickle(run, tmp_path, capsys, monkeypatch):
    exp = tmp_path / "exp"
    cli(["export", run, exp], capsys)
    assert sorted(p.name for p in exp.iterdir()) == ["model.json", "model.safetensors"]
    before = (exp / "model.json").read_text()
    assert "already holds an export" in cli(["export", run, exp], capsys, code=2)[1]  # asked, not silent
    cli(["export", run, exp, "--overwrite"], capsys)
    assert json.loads((exp / "model.json").read_text())["classes"] == json.loads(before)["classes"]
    run_files = sorted(p.name for p in Path(run).iterdir())
    assert "is a run directory" in cli(["export", run, run, "--overwrite"], capsys, code=2)[1]
    assert sorted(p.name for p in Path(run).iterdir()) == run_files  # predict on the run still reads the run
    other = tmp_path / "photos"
    other.mkdir()
    (other / "a.png").write_bytes(b"x")
    assert "holds no export" in cli(["export", run, other, "--overwrite"], capsys, code=2)[1]
    assert sorted(p.name for p in other.iterdir()) == ["a.png"]
    head = (exp / "model.safetensors").read_bytes()[:9]
    assert head[8:9] == b"{"  # safetensors: 8-byte header length, then JSON; no pickle, no zip
    meta = json.loads((exp / "model.json").read_text())
    assert meta["classes"][0] == "T-shirt/top" and meta["preprocessing"]["in_channels"] == 1
    assert meta["provenance"]["source_run"] == str(run.resolve()) and len(meta["class_counts"]) == 10
    from_run = load_model(run, device="cpu")

    def refuse(*a, **k):
        raise AssertionError("an export must load without unpickling")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    from_exp = load_model(exp, device="cpu")
    x = torch.randn(7, 1, 28, 28)
    assert torch.equal(from_run.logits(x), from_exp.logits(x))
    monkeypatch.undo()
    # strict keys: a missing tensor is refused in one line
    from safetensors.torch import load_file, save_file

    t = load_file(exp / "model.safetensors")
    t.pop(sorted(t)[0])
    save_file(t, exp / "model.safetensors")
    with pytest.raises(RunDirError, match="does not fit"):
        load_model(exp, device="cpu")


def test_list_file_single_image_and_resizing(run, test_split, tmp_path, capsys):
    bundle = test_split[0]
    te = bundle.test
    (tmp_path / "sub").mkdir()
    for i in range(4):
        Image.fromarray(te.images[i, :, :, 0]).save(tmp_path / "sub" / f"{i}.png")
    names = [bundle.classes[int(t)] for t in te.targets[:4]]
    lines = [f"sub/0.png {names[0]}", f"sub/1.png {folder_name(names[1])}", f"{tmp_path / 'sub' / '2.png'} "
             f"{int(te.targets[2])}", "# a comment", "", "sub/3.png"]
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    rows = predict(run, tmp_path / "list.txt", topk=2, device="cpu")
    assert [r["label"] for r in rows] == names[:3] + [None] and all(len(r["topk"]) == 2 for r in rows)
    flat = predict(run, tmp_path / "sub", topk=2, device="cpu")  # a flat folder: no labels
    assert [r["topk"] for r in flat] == [r["topk"] for r in rows] and all(r["label"] is None for r in flat)
    out, _ = cli(["predict", run, tmp_path / "list.txt", "--out", tmp_path / "l.csv", "--device", "cpu"], capsys)
    assert "labelled 3" in out and json.loads((tmp_path / "l.json").read_text())["num_samples"] == 3
    one = predict(run, tmp_path / "sub" / "0.png", topk=50, device="cpu")
    assert len(one) == 1 and one[0]["label"] is None and len(one[0]["topk"]) == 10  # topk capped at K
    assert abs(sum(p for _, p in one[0]["topk"]) - 1) < 1e-5
    big = tmp_path / "big.png"  # colour and another size: converted to grey and resized, said once
    Image.fromarray(np.full((40, 36, 3), 120, np.uint8)).save(big)
    shutil.copy(big, tmp_path / "sub" / "9.png")
    capsys.readouterr()
    assert len(predict(run, tmp_path / "sub", device="cpu")) == 5
    assert capsys.readouterr().err.count("resized") == 1


def bad_inputs(root: Path, good: np.ndarray) -> dict:
    (root / "empty").mkdir()
    (root / "broken").mkdir()
    (root / "broken" / "x.png").write_bytes(b"not an image")
    (root / "zoo" / "zebra").mkdir(parents=True)
    Image.fromarray(good).save(root / "zoo" / "zebra" / "a.png")
    Image.fromarray(good).save(root / "a.png")
    (root / "list.txt").write_text("a.png Zebra\n")
    return {"empty folder": root / "empty", "unreadable image": root / "broken", "unknown class folder": root / "zoo",
            "unknown label name": root / "list.txt", "missing input": root / "nope"}


def test_bad_inputs_are_one_line_and_exit_2(run, test_split, tmp_path, capsys):
    cases = bad_inputs(tmp_path, test_split[0].test.images[0, :, :, 0])
    for what, inp in cases.items():
        _, err = cli(["predict", run, inp, "--out", tmp_path / "p.csv", "--device", "cpu"], capsys, code=2)
        assert err.startswith("allnc: error:") and err.count("\n") == 1 and "Traceback" not in err, (what, err)
    for argv in (["predict", tmp_path / "no_run", tmp_path / "a.png"], ["export", tmp_path / "no_run", tmp_path / "e"],
                 ["predict", run, tmp_path / "a.png", "--topk", "0"]):
        _, err = cli(argv, capsys, code=2)
        assert err.startswith("allnc: error:") and err.count("\n") == 1, err
    assert not (tmp_path / "p.csv").exists()


def test_out_naming_a_folder_writes_predictions_csv_in_it(run, test_split, tmp_path, capsys):
    img = tmp_path / "one.png"
    Image.fromarray(test_split[0].test.images[0, :, :, 0]).save(img)
    (tmp_path / "preds").mkdir()
    out, _ = cli(["predict", run, img, "--out", tmp_path / "preds", "--device", "cpu"], capsys)
    rows = list(csv.DictReader(open(tmp_path / "preds" / "predictions.csv")))
    assert [r["path"] for r in rows] == [str(img)] and f"-> {tmp_path / 'preds' / 'predictions.csv'}" in out
    assert sorted(p.name for p in (tmp_path / "preds").iterdir()) == ["predictions.csv"]
    # a trailing slash names a folder even before it exists: made, not taken as a file name
    cli(["predict", run, img, "--out", f"{tmp_path / 'new'}/", "--device", "cpu"], capsys)
    assert (tmp_path / "new").is_dir() and (tmp_path / "new" / "predictions.csv").is_file()


def test_atomic_write_onto_a_folder_names_the_folder_not_a_temporary_file(tmp_path):
    from allnc.rundir import atomic_write_text, describe_os_error

    (tmp_path / "d").mkdir()
    with pytest.raises(IsADirectoryError) as e:
        atomic_write_text(tmp_path / "d", "x")
    assert describe_os_error(e.value, "writing") == f"writing {tmp_path / 'd'} failed: it is a folder where a file is needed; give a file name"
    assert list((tmp_path / "d").iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["d"]

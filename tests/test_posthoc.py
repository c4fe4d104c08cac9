"""Post-hoc corrections (allnc.engine.posthoc): the formulas on hand-made numbers, the
identity at tau = 0 on a trained run, the order of split reads, the written file, bad input."""
from __future__ import annotations

import json
import math

import pytest
import torch

from allnc.cli import main
from allnc.engine import loaders, posthoc as ph
from allnc.engine.context import load_run
from allnc.engine.evaluate import evaluate_accuracy


def _train(root, out, *extra, config="fmnist_lt_ce"):
    rc = main(["train", "--config", config, "--out", str(out), f"data.root={root}", "device=cpu",
               "train.progress=false", "model.width=8", "train.batch_size=32", "train.epochs=2", "data.num_workers=0",
               "data.imbalance_factor=10", *extra])
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def run(tiny_learnable_fmnist, tmp_path_factory):
    return _train(tiny_learnable_fmnist, tmp_path_factory.mktemp("posthoc") / "run", "data.val_per_class=3")


# (c) the formulas on hand-made W, b, features ---------------------------------------------
def test_worked_example_of_both_corrections():
    W = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([1.0, -1.0])
    h = torch.tensor([[1.0, 2.0]])
    # tau-norm: w_k / ||w_k||^tau, bias dropped; ||w_0|| = 3, ||w_1|| = 1
    assert torch.allclose(ph.corrected_logits(h, W, b, "tau_norm", 0.0), torch.tensor([[3.0, 2.0]]))
    assert torch.allclose(ph.corrected_logits(h, W, b, "tau_norm", 1.0), torch.tensor([[1.0, 2.0]]))
    assert torch.allclose(ph.corrected_logits(h, W, b, "tau_norm", 0.5), torch.tensor([[3 / math.sqrt(3), 2.0]]))
    # logit adjustment: h W^T + b - tau log(prior), prior 0.9 / 0.1
    lp = torch.log(torch.tensor([0.9, 0.1]))
    assert torch.allclose(ph.corrected_logits(h, W, b, "logit_adjust", 0.0, lp), torch.tensor([[4.0, 1.0]]))
    z2 = ph.corrected_logits(h, W, b, "logit_adjust", 2.0, lp)
    assert torch.allclose(z2, torch.tensor([[4 - 2 * math.log(0.9), 1 - 2 * math.log(0.1)]]))
    assert z2.argmax(1).item() == 1  # the tail class wins once tau is large enough
    # a cosine head normalises w_k itself: tau-norm changes nothing
    for tau in (0.0, 0.7, 2.0):
        assert torch.allclose(ph.corrected_logits(h, W, None, "tau_norm", tau, cosine_scale=30.0),
                              ph.corrected_logits(h, W, None, "logit_adjust", 0.0, lp, cosine_scale=30.0))
    # ties go to the smaller tau
    assert ph.choose_tau({0.0: 50.0, 0.5: 60.0, 1.0: 60.0}) == 0.5


# (a) tau = 0 is the identity ---------------------------------------------------------------
@torch.no_grad()
def test_tau_zero_is_the_run_itself(run, monkeypatch):
    own = json.loads((run / "metrics.json").read_text())
    ctx = load_run(run, device="cpu")
    ctx.method.eval()
    W, b = ctx.method.classifier_weight()
    h, y, _ = ph._features(ctx, ctx.bundle, ctx.choice, "test")
    z = torch.cat([ctx.method(x) for x, _ in loaders.iter_eval(ctx.cfg, ctx.bundle, "test", ctx.choice, ctx.device)])
    lp = torch.zeros(W.shape[0])
    assert torch.equal(ph.corrected_logits(h, W, b, "logit_adjust", 0.0, lp).argmax(1), z.argmax(1))
    # tau-norm at tau = 0: the run's classifier without its bias (Kang et al. drop it)
    ctx.method.classifier.bias.zero_()
    z0 = torch.cat([ctx.method(x) for x, _ in loaders.iter_eval(ctx.cfg, ctx.bundle, "test", ctx.choice, ctx.device)])
    assert torch.equal(ph.corrected_logits(h, W, b, "tau_norm", 0.0).argmax(1), z0.argmax(1))
    no_bias = evaluate_accuracy(ctx)

    monkeypatch.setattr(ph, "choose_tau", lambda val: 0.0)
    la = ph.posthoc(run, "logit_adjust", device="cpu")
    assert la["tau"] == 0.0 and la["test"]["top1"] == own["top1"] == la["run_test"]["top1"]
    assert la["test"]["groups"] == own["groups"]
    assert la["test"]["ece"] == pytest.approx(own["ece"], abs=1e-4)  # the same logits, so the same calibration
    tn = ph.posthoc(run, "tau_norm", device="cpu")
    assert tn["test"]["top1"] == no_bias["top1"] and tn["test"]["per_class"] == no_bias["per_class"]
    assert tn["test"]["ece"] == pytest.approx(no_bias["ece"], abs=1e-4)
    assert any("bias is dropped" in n for n in tn["notes"])


# (b) the validation choice never reads the test set ------------------------------------------
def test_test_set_is_read_once_after_tau_is_chosen(run, monkeypatch):
    events = []
    real_iter, real_choose = loaders.iter_eval, ph.choose_tau

    def spy_iter(cfg, bundle, split, *a, **k):
        events.append(split)
        return real_iter(cfg, bundle, split, *a, **k)

    def spy_choose(val):
        events.append("chosen")
        return real_choose(val)

    monkeypatch.setattr(loaders, "iter_eval", spy_iter)
    monkeypatch.setattr(ph, "choose_tau", spy_choose)
    for method in ("tau_norm", "logit_adjust"):
        events.clear()
        ph.posthoc(run, method, device="cpu")
        assert events == ["val", "chosen", "test"]


# (d) the written file ------------------------------------------------------------------------
def test_written_json_holds_tau_and_figures(run, capsys):
    assert main(["posthoc", str(run), "--method", "logit_adjust", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    d = json.loads((run / "posthoc_logit_adjust.json").read_text())
    assert d["method"] == "logit_adjust" and d["row"] == "post-hoc LA"
    assert d["tau"] in d["tau_grid"] and d["tau_grid"] == [0.25 * i for i in range(13)]
    assert d["val_top1"] == max(d["val_top1_by_tau"].values()) == d["val_top1_by_tau"][f"{d['tau']:g}"]
    assert set(d["test"]["groups"]) == {"many", "medium", "few"} and d["test"]["top1"] is not None
    assert d["run_test"]["top1"] == json.loads((run / "metrics.json").read_text())["top1"]
    assert d["validation"]["per_class"] == 3 and "own" in d["validation"]["source"]
    assert d["class_counts"] == json.loads((run / "metrics.json").read_text())["class_counts"]
    assert f"chosen tau {d['tau']:g}" in printed and "posthoc_logit_adjust.json" in printed


def test_drawn_split_names_the_images_the_run_trained_on(tiny_learnable_fmnist, tmp_path):
    run0 = _train(tiny_learnable_fmnist, tmp_path / "run0", "train.epochs=1")
    d = ph.posthoc(run0, "tau_norm", device="cpu", val_per_class=5)
    assert d["validation"]["per_class"] == 5 and "drawn" in d["validation"]["source"]
    # the head class (60 images, all kept by IF 10) gives its 5 from its training images
    assert d["validation"]["trained_on"] == {0: 5}
    assert any("images the run trained on" in n for n in d["notes"])
    saved = json.loads((run0 / "posthoc_tau_norm.json").read_text())
    assert saved["validation"]["trained_on"] == {"0": 5}
    # the prior and the groups stay the run's own training counts
    assert d["class_counts"] == json.loads((run0 / "metrics.json").read_text())["class_counts"]


# (e) bad input -----------------------------------------------------------------------------
def _one_line_exit_2(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("allnc: error:") and err.count("\n") == 1, err
    return err


def test_bad_input_is_one_line_and_exit_2(run, tmp_path, capsys, monkeypatch):
    assert "did you mean 'tau_norm'" in _one_line_exit_2(capsys, ["posthoc", str(run), "--method", "tau_nrm"])
    assert "checkpoint.pt" in _one_line_exit_2(capsys, ["posthoc", str(tmp_path / "none"), "--method", "tau_norm"])
    assert not (tmp_path / "none").exists()
    from allnc.methods.single import SingleBranch

    def none(self):
        raise NotImplementedError

    monkeypatch.setattr(SingleBranch, "classifier_weight", none)
    err = _one_line_exit_2(capsys, ["posthoc", str(run), "--method", "logit_adjust", "--device", "cpu"])
    assert "no classifier weight" in err


def test_a_split_too_large_for_a_class_names_the_option_that_fixes_it(tiny_learnable_fmnist, tmp_path, capsys):
    run = _train(tiny_learnable_fmnist, tmp_path / "noval", "train.epochs=1")  # no validation split of its own
    err = _one_line_exit_2(capsys, ["posthoc", str(run), "--method", "tau_norm", "--device", "cpu",
                                    "--val-per-class", "100000"])
    assert "lower --val-per-class (now 100000)" in err and "data.val_per_class" not in err.split("lower")[-1]
    # zero is refused, not read as "the default": tau cannot be chosen on no images
    for n in ("0", "-3"):
        err = _one_line_exit_2(capsys, ["posthoc", str(run), "--method", "tau_norm", "--device", "cpu",
                                        "--val-per-class", n])
        assert f"--val-per-class {n}" in err and "at least 1" in err


def _list_files(root, n_per_class=(12, 6, 3), size=8):
    """A tiny list-file data set: class c is images of brightness 40 + 80 c (learnable)."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    (root / "img").mkdir(parents=True)
    lines = []
    for c, n in enumerate(n_per_class):
        for i in range(n + 4):  # 4 more per class for the test list
            a = (40 + 80 * c + torch.randint(0, 20, (size, size, 3), generator=g)).to(torch.uint8).numpy()
            Image.fromarray(a).save(root / "img" / f"{c}_{i}.png")
            lines.append((f"img/{c}_{i}.png {c}", i < n))
    (root / "train.txt").write_text("\n".join(s for s, tr in lines if tr) + "\n")
    (root / "test.txt").write_text("\n".join(s for s, tr in lines if not tr) + "\n")
    return root


def test_a_list_file_run_takes_its_validation_list(tmp_path, capsys):
    root = _list_files(tmp_path / "data")
    rc = main(["train", "--config", "fmnist_lt_ce", "--out", str(tmp_path / "run"), "data.name=listfile",
               f"data.root={root}", "data.train_list=train.txt", "data.test_list=test.txt", "data.mean=[0.5,0.5,0.5]",
               "data.std=[0.25,0.25,0.25]", "device=cpu", "train.progress=false", "model.width=8",
               "train.batch_size=8", "train.epochs=1", "data.num_workers=0"])
    assert rc == 0
    run = tmp_path / "run"
    # no validation split of its own, none can be drawn: the error names the option that gives one
    err = _one_line_exit_2(capsys, ["posthoc", str(run), "--method", "logit_adjust", "--device", "cpu"])
    assert "--val-list FILE" in err
    # the test list as validation list: the validation figure at the chosen tau is the test figure
    d = ph.posthoc(run, "logit_adjust", device="cpu", val_list="test.txt")
    assert d["validation"]["source"].startswith("--val-list test.txt")
    assert d["val_top1"] == pytest.approx(d["test"]["top1"])
    assert d["val_top1_by_tau"]["0"] == pytest.approx(d["run_test"]["top1"])
    # trained with the validation list: the run evaluates it (here the test list: the same figure)
    # and posthoc takes it as the run's own
    rc = main(["train", "--config", "fmnist_lt_ce", "--out", str(tmp_path / "run2"), "data.name=listfile",
               f"data.root={root}", "data.train_list=train.txt", "data.test_list=test.txt", "data.val_list=test.txt",
               "data.mean=[0.5,0.5,0.5]", "data.std=[0.25,0.25,0.25]", "device=cpu", "train.progress=false",
               "model.width=8", "train.batch_size=8", "train.epochs=1", "data.num_workers=0"])
    assert rc == 0
    m = json.loads((tmp_path / "run2" / "metrics.json").read_text())
    assert m["val_list"] == "test.txt" and m["val"]["top1"] == pytest.approx(m["top1"])
    d2 = ph.posthoc(tmp_path / "run2", "tau_norm", device="cpu", val_list="other.txt")
    assert d2["validation"]["source"] == "the run's own (data.val_list=test.txt)"
    assert any("--val-list other.txt ignored" in n for n in d2["notes"])


# the inference mix of a two-branch run ------------------------------------------------------
def _train_allnc(root, out, *extra):
    return _train(root, out, *extra, config="fmnist_lt_allnc")


@pytest.fixture(scope="module")
def allnc_run(tiny_learnable_fmnist, tmp_path_factory):
    """AllNC trained without a validation split: inference_mix auto ran with the adaptor's final
    mix, 1 - (1/2)^2 = 0.75 after two epochs."""
    return _train_allnc(tiny_learnable_fmnist, tmp_path_factory.mktemp("mix") / "run")


def test_choose_mix_takes_the_best_and_breaks_ties_towards_half():
    from allnc.methods.gbbn import MIX_GRID, choose_mix

    assert choose_mix({0.0: 50.0, 0.3: 60.0, 0.6: 60.0, 1.0: 55.0}) == 0.6
    assert choose_mix({0.0: 70.0, 0.5: 60.0}) == 0.0
    assert MIX_GRID[0] == 0.0 and MIX_GRID[-1] == 1.0 and len(MIX_GRID) == 21


def test_the_runs_own_mix_gives_its_own_figures_and_the_test_set_is_read_last(allnc_run, monkeypatch):
    own = json.loads((allnc_run / "metrics.json").read_text())
    events = []
    real_iter = loaders.iter_eval

    def spy_iter(cfg, bundle, split, *a, **k):
        events.append(split)
        return real_iter(cfg, bundle, split, *a, **k)

    def own_mix(val):
        events.append("chosen")
        assert set(val) == set(ph.MIX_GRID)
        return 0.75

    monkeypatch.setattr(loaders, "iter_eval", spy_iter)
    monkeypatch.setattr(ph, "choose_mix", own_mix)
    r = ph.posthoc(allnc_run, "inference_mix", device="cpu")
    assert events == ["val", "chosen", "test"]
    assert r["run_mix"] == 0.75 and r["tau"] == 0.75 and r["parameter"] == "a"
    assert r["test"]["top1"] == own["top1"] == r["run_test"]["top1"] and r["test"]["groups"] == own["groups"]
    assert r["test"]["ece"] == pytest.approx(own["ece"], abs=1e-4)
    assert r["validation"]["source"].startswith("drawn")


def test_the_post_hoc_mix_is_the_one_a_validation_run_chooses(tiny_learnable_fmnist, tmp_path, capsys):
    """A run with its own validation split and inference_mix=val chose a while training; the
    post-hoc choice on the same split is the same a, and the same test figures."""
    run = _train_allnc(tiny_learnable_fmnist, tmp_path / "val", "data.val_per_class=3", "method.gbbn.inference_mix=val")
    own = json.loads((run / "metrics.json").read_text())
    chosen = own["calibration"]["inference_alpha"]
    assert main(["posthoc", str(run), "--method", "inference_mix", "--device", "cpu"]) == 0
    d = json.loads((run / "posthoc_inference_mix.json").read_text())
    assert d["tau"] == chosen and d["test"]["top1"] == own["top1"]
    assert {float(k): v for k, v in d["val_top1_by_tau"].items()} == {
        float(k): pytest.approx(v, abs=1e-3) for k, v in own["calibration"]["val_top1_by_alpha"].items() if k != "final"}
    assert any("chose its mix on its own validation split" in n for n in d["notes"])
    assert f"chosen a {chosen:g}" in capsys.readouterr().out


def test_a_one_branch_run_has_no_mix_to_choose(run, capsys):
    assert main(["posthoc", str(run), "--method", "inference_mix", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "two-branch" in err[0] and "tau_norm or logit_adjust" in err[0]

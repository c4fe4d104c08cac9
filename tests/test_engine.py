"""The training engine: outputs, resume equality, NaN stop, run directories, data parallel."""
import json
import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from allnc.cli import main as cli_main
from allnc.config import load_config
from allnc.data import lt_counts
from allnc.engine.checkpoint import load_checkpoint
from allnc.engine.trainer import Trainer
from allnc.errors import ConfigError, RunDirError, TrainingDiverged

FAST = ["device=cpu", "train.progress=false", "model.width=8", "train.batch_size=32", "train.warmup_epochs=0",
        "train.schedule=constant", "train.lr=0.05", "data.num_workers=0"]


def tiny_cfg(root, *extra, config="fmnist_lt_ce"):
    return load_config(config, [f"data.root={root}", "data.imbalance_factor=10", *FAST, *extra])


def test_train_writes_honest_metrics(tiny_learnable_fmnist, tmp_path):
    cfg = tiny_cfg(tiny_learnable_fmnist, "train.epochs=5")
    m = Trainer(cfg, tmp_path / "run").fit()
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["top1"] == pytest.approx(m["top1"])
    assert saved["class_counts"] == lt_counts(60, 10, 10)
    # n_max 60: no class has more than 100 images, so "many" is empty and reported as such
    assert saved["groups"]["many"] is None and saved["groups"]["medium"] is not None
    assert saved["top1"] > 25  # 10% is chance (balanced, the same data reaches 100%)
    assert np.isclose(np.mean(saved["per_class"]), saved["top1"])  # balanced test set
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3, 4, 5]
    assert saved["config"]["train"]["epochs"] == 5 and saved["versions"]["torch"] == torch.__version__


class Interrupt(Exception):
    pass


def _interrupt_at(trainer, epoch_to_stop):
    orig = trainer.method.on_epoch_start

    def hook(epoch, epochs):
        if epoch == epoch_to_stop:
            raise Interrupt
        orig(epoch, epochs)

    trainer.method.on_epoch_start = hook


@pytest.mark.parametrize("config", ["fmnist_lt_ce", "fmnist_lt_allnc"])
def test_resume_ends_exactly_like_an_uninterrupted_run(tiny_learnable_fmnist, tmp_path, config, monkeypatch):
    extra = ("train.epochs=4", "train.ckpt_every=2", "train.eval_every=1")
    full = Trainer(tiny_cfg(tiny_learnable_fmnist, *extra, config=config), tmp_path / "full").fit()

    monkeypatch.setenv("ALLNC_COMMIT", "a" * 40)  # the code of the first start ...
    t = Trainer(tiny_cfg(tiny_learnable_fmnist, *extra, config=config), tmp_path / "cut")
    _interrupt_at(t, 3)  # epochs 1-3 run, the checkpoint of epoch 2 is the last one written
    with pytest.raises(Interrupt):
        t.fit()
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["epoch"] == 2
    monkeypatch.setenv("ALLNC_COMMIT", "b" * 40)  # ... and of the resume
    r = Trainer(None, tmp_path / "cut", resume=True)
    orig = r.method.on_epoch_start

    def commit_meanwhile(epoch, epochs):  # a commit made while the run trains is not its code
        monkeypatch.setenv("ALLNC_COMMIT", "c" * 40)
        orig(epoch, epochs)

    r.method.on_epoch_start = commit_meanwhile
    resumed = r.fit()
    saved = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert saved["sources"] == [{"from_epoch": 0, "git_commit": "a" * 40, "source_modified": None},
                                {"from_epoch": 2, "git_commit": "b" * 40, "source_modified": None}]
    assert saved["git_commit"] == "b" * 40

    assert resumed["top1"] == full["top1"] and resumed["per_class"] == full["per_class"]
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")["method"]
    b = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["method"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k  # weights, BN statistics, class-mean memory, adaptor
    if config == "fmnist_lt_allnc":
        assert "mem_c.means" in a and "alpha" in a
    hist = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_learnable_fmnist, tmp_path):
    t = Trainer(tiny_cfg(tiny_learnable_fmnist, "train.epochs=3", "train.ckpt_every=1"), tmp_path / "run")
    orig = t.method.training_loss

    def bad(batches, state):
        loss, logs = orig(batches, state)
        return (loss * float("nan") if state.epoch == 1 else loss), logs

    t.method.training_loss = bad
    with pytest.raises(TrainingDiverged, match=r"became nan at epoch 2 step 1.*checkpoint \(epoch 1\)"):
        t.fit()
    ck = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert ck["epoch"] == 1 and all(torch.isfinite(v).all() for v in ck["method"].values() if v.is_floating_point())


def test_run_directory_is_never_overwritten_silently(tiny_learnable_fmnist, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    # a folder of other files is never a run's to replace, not even with --overwrite
    for overwrite in (False, True):
        with pytest.raises(RunDirError, match="is not a run directory.*choose another --out"):
            Trainer(tiny_cfg(tiny_learnable_fmnist, "train.epochs=1"), out, overwrite=overwrite)
    with pytest.raises(RunDirError, match="no run in"):
        Trainer(None, out, resume=True)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"
    grid_dir = tmp_path / "grid_run"  # a grid opens the run's log before the run starts: still a run's folder
    grid_dir.mkdir()
    (grid_dir / "log.txt").write_text("started\n")
    Trainer(tiny_cfg(tiny_learnable_fmnist, "train.epochs=1"), grid_dir).release()
    (out / "config.yaml").write_text("seed: 0\n")  # a run that stopped before its first checkpoint
    with pytest.raises(RunDirError, match="stopped before its first checkpoint.*--overwrite") as e:
        Trainer(tiny_cfg(tiny_learnable_fmnist, "train.epochs=1"), out)
    assert "--resume" not in str(e.value)  # nothing to resume: the advice must not offer it
    with pytest.raises(RunDirError, match="no checkpoint.pt.*--overwrite"):
        Trainer(None, out, resume=True)
    # --overwrite empties a run's folder, never the user's files beside a run's
    with pytest.raises(RunDirError, match=r"not a run's \(notes.txt\); nothing was deleted"):
        Trainer(tiny_cfg(tiny_learnable_fmnist, "train.epochs=1"), out, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").unlink()
    Trainer(tiny_cfg(tiny_learnable_fmnist, "train.epochs=1"), out, overwrite=True).fit()
    assert (out / "metrics.json").exists()
    with pytest.raises(RunDirError, match="already exists.*--resume.*--overwrite"):
        Trainer(tiny_cfg(tiny_learnable_fmnist, "train.epochs=1"), out)
    # continue and replace at once: refused, and the run is kept
    with pytest.raises(RunDirError, match="--resume continues .* --overwrite replaces it"):
        Trainer(tiny_cfg(tiny_learnable_fmnist, "train.epochs=1"), out, resume=True, overwrite=True)
    assert (out / "checkpoint.pt").is_file()
    with pytest.raises(ConfigError, match="'train.lr' is 0.05 in the saved run and cannot change to 0.3 in a resumed"):
        Trainer(None, out, resume=True, overrides=["train.lr=0.3"])
    # the run's own values restated (in another spelling too) are no change: accepted
    Trainer(None, out, resume=True, overrides=["train.lr=5e-2", "train.epochs=1", "model.width=8"]).release()
    with pytest.raises(ConfigError, match="unknown config key 'train.lrr'"):
        Trainer(None, out, resume=True, overrides=["train.lrr=0.05"])


def test_cli_errors_are_one_line_with_exit_2(tiny_learnable_fmnist, tmp_path, capsys, monkeypatch):
    rc = cli_main(["train", "--config", "fmnist_lt_ce", "--out", str(tmp_path / "r"), "train.epoch=2"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "did you mean 'train.epochs'" in err
    rc = cli_main(["data", "--config", "fmnist_lt_ce", f"data.root={tmp_path / 'nowhere'}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and str(tmp_path / "nowhere") in err
    # under torchrun: the line names its rank and leaves in one write (two ranks' lines never merge)
    writes = []

    class Stderr:
        def write(self, text):
            writes.append(text)

        def flush(self):
            pass

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr("sys.stderr", Stderr())
    assert cli_main(["train", "--config", "fmnist_lt_ce", "--out", str(tmp_path / "r"), "train.epoch=2"]) == 2
    assert len(writes) == 1 and writes[0].startswith("allnc: [rank 1] error: unknown config key 'train.epoch'")
    assert writes[0].endswith("\n") and writes[0].count("\n") == 1


def test_cli_data_prints_counts_and_groups(tiny_learnable_fmnist, capsys):
    assert cli_main(["data", "--config", "fmnist_lt_ce", f"data.root={tiny_learnable_fmnist}",
                     "data.imbalance_factor=10"]) == 0
    out = capsys.readouterr().out
    assert "counts " + " ".join(map(str, lt_counts(60, 10, 10))) in out
    assert "many      0 classes" in out
    assert "images grey, decoded into memory at 28x28" in out


# ------------------------------------------------------------------ data parallel
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, root, out, extra):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from allnc import dist

    try:
        Trainer(tiny_cfg(root, *extra), out).fit()
    finally:
        dist.shutdown()


def test_two_processes_match_one_process(tiny_learnable_fmnist, tmp_path):
    """2 gloo processes with the same global batch see exactly the samples one process sees,
    and with train.sync_bn batch norm uses the global batch's statistics, so the runs differ
    only by floating-point arithmetic (the global variance is E[x^2] - E[x]^2 here, a two-pass
    formula in one process), which small networks amplify a little over steps. Stated tolerance:
    every epoch's mean loss within 1% (relative; without sync_bn they differ by over 40% here)
    and the final test accuracy within 1 point."""
    extra = ("train.epochs=3", "train.eval_every=1", "train.sync_bn=true")
    one = Trainer(tiny_cfg(tiny_learnable_fmnist, *extra), tmp_path / "one").fit()
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tiny_learnable_fmnist), str(tmp_path / "two"), extra), nprocs=2)
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two["world_size"] == 2
    h1 = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    h2 = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(h1, h2):
        assert abs(a["loss"] - b["loss"]) <= 0.01 * a["loss"], (a["loss"], b["loss"])
    assert abs(one["top1"] - two["top1"]) <= 1.0
    # the calibration bins, summed over the two ranks' shards, count every test image once
    for m in (one, two):
        assert sum(b["count"] for b in m["reliability"]) == m["num_samples"] > 0


def test_cli_overrides_may_follow_the_options(tiny_learnable_fmnist, tmp_path, capsys):
    out = tmp_path / "r"
    assert cli_main(["train", "train.epochs=1", "--config", "fmnist_lt_ce", f"data.root={tiny_learnable_fmnist}",
                     "--out", str(out), *FAST, "data.imbalance_factor=10", "seed=3"]) == 0
    saved = json.loads((out / "metrics.json").read_text())["config"]
    assert (saved["train"]["epochs"], saved["seed"], saved["model"]["width"]) == (1, 3, 8)
    assert "top-1" in capsys.readouterr().out


def test_heartbeat_says_something_every_30_seconds():
    from allnc.engine.progress import Heartbeat

    t = [0.0]
    lines = []
    hb = Heartbeat(lines.append, epochs=2, start_epoch=0, steps=10, images_per_step=64, clock=lambda: t[0])
    for step in range(10):  # 10 steps of 7 s: lines at 35 s and 70 s (>= 30 s after the last)
        t[0] += 7.0
        hb.tick(0, step, 10)
    assert len(lines) == 2
    # 5 steps in 35 s: 64 * 5 / 35 images/s; 15 steps left at 7 s each: 1:45
    assert lines[0] == "epoch 1/2 step 5/10: 9 images/s, 1:45 left"


def test_source_modified_reads_the_package_directory_only(tmp_path, monkeypatch):
    import subprocess

    from allnc.engine.runtime import source_modified

    monkeypatch.delenv("ALLNC_COMMIT", raising=False)
    assert source_modified(tmp_path) is None  # not a git repository: cannot tell
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    pkg = tmp_path / "src" / "pkg"
    pkg.mkdir(parents=True)
    (pkg / "mod.py").write_text("x = 1\n")
    (tmp_path / "README.md").write_text("doc\n")
    subprocess.run([*git, "add", "-A"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "c"], cwd=tmp_path, check=True)
    assert source_modified(pkg) is False
    (tmp_path / "README.md").write_text("doc, edited\n")  # outside the package
    (tmp_path / ".gitignore").write_text("__pycache__/\n")
    (pkg / "__pycache__").mkdir()
    (pkg / "__pycache__" / "mod.pyc").write_bytes(b"\0")  # ignored
    assert source_modified(pkg) is False
    (pkg / "new.py").write_text("y = 2\n")  # a module not committed
    assert source_modified(pkg) is True
    (pkg / "new.py").unlink()
    (pkg / "mod.py").write_text("x = 2\n")
    assert source_modified(pkg) is True
    monkeypatch.setenv("ALLNC_COMMIT", "a" * 40)  # a copied tree: its commit is named, its state unknown
    assert source_modified(pkg) is None


def test_a_calibrated_run_is_saved_as_it_was_measured(tiny_learnable_fmnist, tmp_path):
    """GBBN's validation-chosen inference mix lives in a buffer: the checkpoint, the last
    epoch's record (accuracy and NC figures) and metrics.json must all describe the model with
    the chosen mix; --resume of a finished run measures its end again the same way."""
    from allnc.engine.checkpoint import save_checkpoint
    from allnc.engine.context import load_run
    from allnc.engine.evaluate import evaluate_accuracy, neural_collapse
    from allnc.metrics import nc_summary

    cfg = tiny_cfg(tiny_learnable_fmnist, "train.epochs=4", "data.val_per_class=5", "nc.every=2",
                   config="fmnist_lt_bbn")
    run = tmp_path / "run"
    m = Trainer(cfg, run).fit()
    alpha = m["calibration"]["inference_alpha"]
    ck = load_checkpoint(run / "checkpoint.pt")
    assert float(ck["method"]["infer_alpha"]) == pytest.approx(alpha)
    ctx = load_run(run, device="cpu")
    assert evaluate_accuracy(ctx, split="test")["top1"] == pytest.approx(m["top1"])
    assert evaluate_accuracy(ctx, split="val")["top1"] == pytest.approx(m["val"]["top1"])
    nc, _ = neural_collapse(ctx, splits=("train",), max_samples=int(cfg.nc.max_samples))
    want_nc = nc_summary(nc["train"])
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["test_top1"] == pytest.approx(m["top1"]) and last["nc"] == pytest.approx(want_nc)
    # a mix below the best validation top-1 (so not the chosen one): a checkpoint holding it
    # instead would fail the checks above (the chosen mix itself depends on the CPU, even 0.5)
    by = {k: v for k, v in m["calibration"]["val_top1_by_alpha"].items() if k != "final"}
    other = next(float(a) for a, v in by.items() if v < max(by.values()))

    # a run saved before the choice reached the checkpoint: --resume measures its end again
    ck["method"]["infer_alpha"].fill_(other)
    save_checkpoint(run / "checkpoint.pt", ck)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    stale = {**json.loads(lines[-1]), "test_top1": -1.0, "nc": {"nc1_cb": -1.0}}
    (run / "metrics.jsonl").write_text("\n".join(lines[:-1] + [json.dumps(stale)]) + "\n")
    again = Trainer(None, run, resume=True).fit()
    assert again["top1"] == pytest.approx(m["top1"]) and again["calibration"] == m["calibration"]
    assert again["wall_time_s"] == round(ck["wall_time"], 2)  # the time spent training: the measuring adds none
    assert float(load_checkpoint(run / "checkpoint.pt")["method"]["infer_alpha"]) == pytest.approx(alpha)
    redone = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in redone] == [1, 2, 3, 4]
    assert redone[-1]["test_top1"] == pytest.approx(m["top1"]) and redone[-1]["nc"] == pytest.approx(want_nc)

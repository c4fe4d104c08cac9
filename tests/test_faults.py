"""Fault injection for every command (train, train --resume, eval, nc, report, compare, grid):
truncated or corrupt checkpoints, missing or damaged run files, read-only or full output
places, a second writer, a kill at a random step followed by --resume, interrupts and bad
values. Each case must end in one line on stderr with exit status 2 (130 for an interrupt),
or in a correct result; never a traceback, never a finished result lost or overwritten."""
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from allnc import rundir
from allnc.cli import main as cli_main

FAST = ["device=cpu", "train.progress=false", "model.width=8", "train.batch_size=32", "train.warmup_epochs=0",
        "train.schedule=constant", "train.lr=0.05", "data.num_workers=0", "data.imbalance_factor=10",
        "train.ckpt_every=1", "train.eval_every=1"]


def run(argv, capsys, code=2):
    """Run the CLI in-process: no exception may escape (that would be a traceback); a failure
    is exactly one line on stderr."""
    rc = cli_main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "Traceback" not in out
    assert rc == code, (rc, err, out[-500:])
    if code != 0:
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("allnc:"), err
    return err


def train_argv(root, out, *extra, config="fmnist_lt_ce"):
    return ["train", "--config", config, "--out", out, f"data.root={root}", *FAST, *extra]


@pytest.fixture(scope="module")
def finished(tiny_learnable_fmnist, tmp_path_factory):
    """A finished 2-epoch run (checkpoint per epoch) to copy and break."""
    out = tmp_path_factory.mktemp("faults") / "done"
    assert cli_main([str(a) for a in train_argv(tiny_learnable_fmnist, out, "train.epochs=2")]) == 0
    return out


@pytest.fixture
def copy(finished, tmp_path):
    def make(name="r"):
        dst = tmp_path / name
        shutil.copytree(finished, dst)
        (dst / rundir.LOCK).unlink(missing_ok=True)
        return dst

    return make


def snapshot(d: Path) -> dict:
    return {p.name: p.read_bytes() for p in d.iterdir() if p.is_file() and p.name != rundir.LOCK}


# ------------------------------------------------------------------ broken checkpoints
BREAKS = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "corrupt": lambda p: p.write_bytes(os.urandom(p.stat().st_size)),
    "empty": lambda p: p.write_bytes(b""),
    "missing": lambda p: p.unlink(),
}


@pytest.mark.parametrize("how", sorted(BREAKS))
@pytest.mark.parametrize("command", ["eval", "nc", "resume"])
def test_broken_checkpoint_is_one_line_naming_the_file(command, how, copy, tiny_learnable_fmnist, capsys):
    d = copy()
    BREAKS[how](d / rundir.CHECKPOINT)
    before = snapshot(d)
    argv = {"eval": ["eval", d, "--device", "cpu"], "nc": ["nc", d, "--device", "cpu"],
            "resume": ["train", "--out", d, "--resume"]}[command]
    err = run(argv, capsys)
    assert str(d) in err and ("checkpoint" in err)
    assert snapshot(d) == before  # nothing finished was touched


def test_missing_run_directory(tmp_path, capsys):
    for argv in (["eval", tmp_path / "nope"], ["nc", tmp_path / "nope"], ["report", tmp_path / "nope"]):
        run(argv, capsys)


# ------------------------------------------------------------------ writing the run
def test_second_writer_is_refused_and_changes_nothing(copy, tiny_learnable_fmnist, capsys):
    d = copy()
    before = snapshot(d)
    with rundir.RunLock(d):
        err = run(train_argv(tiny_learnable_fmnist, d, "train.epochs=2", "--overwrite"), capsys)
        assert "another process is writing" in err
        run(["train", "--out", d, "--resume"], capsys)
    assert snapshot(d) == before


def test_finished_run_is_never_overwritten_without_asking(copy, tiny_learnable_fmnist, capsys):
    d = copy()
    before = snapshot(d)
    err = run(train_argv(tiny_learnable_fmnist, d, "train.epochs=2"), capsys)
    assert "--overwrite" in err and snapshot(d) == before


def test_read_only_output_place(tiny_learnable_fmnist, tmp_path, monkeypatch, capsys):
    def refuse(self):
        raise OSError(errno.EROFS, "Read-only file system", str(self.path.parent))

    monkeypatch.setattr(rundir.RunLock, "acquire", refuse)
    err = run(train_argv(tiny_learnable_fmnist, tmp_path / "ro", "train.epochs=1"), capsys)
    assert "read-only file system" in err and "another --out" in err


def test_full_disk_keeps_the_good_checkpoint_and_resume_repairs_the_log(tiny_learnable_fmnist, tmp_path,
                                                                      monkeypatch, capsys):
    import allnc.engine.checkpoint as ck

    real = ck.atomic_write_bytes
    calls = {"n": 0}

    def full_at_second(path, write):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, write)

    monkeypatch.setattr(ck, "atomic_write_bytes", full_at_second)
    d = tmp_path / "full"
    err = run(train_argv(tiny_learnable_fmnist, d, "train.epochs=3"), capsys)
    assert "no space left on device" in err and "epoch 1) is kept" in err and "--resume" in err
    assert ck.load_checkpoint(d / rundir.CHECKPOINT)["epoch"] == 1
    assert [r["epoch"] for r in rundir.read_jsonl(d / rundir.METRICS_LOG)] == [1, 2]  # ahead of the checkpoint
    assert not list(d.glob(".*.tmp"))  # no temporary file left behind
    monkeypatch.setattr(ck, "atomic_write_bytes", real)
    run(["train", "--out", d, "--resume"], capsys, code=0)
    assert [r["epoch"] for r in rundir.read_jsonl(d / rundir.METRICS_LOG)] == [1, 2, 3]


def test_interrupt_before_the_first_checkpoint_says_how_to_start_again(tiny_learnable_fmnist, tmp_path,
                                                                     monkeypatch, capsys):
    from allnc.engine.stepper import Stepper

    d = tmp_path / "int"

    def interrupt(self, batches, state):
        raise KeyboardInterrupt

    monkeypatch.setattr(Stepper, "step", interrupt)
    err = run(train_argv(tiny_learnable_fmnist, d, "train.epochs=2"), capsys, code=130)
    assert "before the first checkpoint" in err and "--overwrite" in err
    monkeypatch.undo()
    err = run(["train", "--out", d, "--resume"], capsys)
    assert "--overwrite" in err
    run(train_argv(tiny_learnable_fmnist, d, "train.epochs=1", "--overwrite"), capsys, code=0)


@pytest.mark.parametrize("bad", ["train.lr=nan", "data.imbalance_factor=.inf", "data.imbalance_factor=1e9",
                                 "data.imbalance_factor=nan", "data.lt_seed=-1", "train.amp=fp16", "train.epochs=0",
                                 "model.name=resnet99", "nosuch.key=1"])
def test_bad_values_are_one_line(bad, tiny_learnable_fmnist, tmp_path, capsys):
    d = tmp_path / "bad"
    run(train_argv(tiny_learnable_fmnist, d, "train.epochs=1", bad), capsys)
    assert not (d / rundir.METRICS).exists()


def test_checkpoints_load_without_pickled_code(finished):
    ck = torch.load(finished / rundir.CHECKPOINT, weights_only=True)  # plain types only
    assert ck["epoch"] == 2 and isinstance(ck["versions"]["torch"], str)
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in finished.iterdir() if p.is_file()}
    assert len(set(modes.values())) == 1, modes  # one file mode for every run file


# ------------------------------------------------------------------ eval and nc
def test_nc_subsample_is_class_stratified(copy, capsys):
    d = copy()
    run(["nc", d, "--device", "cpu", "--max-samples", 50], capsys, code=0)
    nc = json.loads((d / rundir.NC_JSON).read_text())
    assert nc["train"]["info"]["num_samples"] == 50
    assert nc["train"]["info"]["present_classes"] == 10  # every class, not the first classes of a sorted split
    err = run(["nc", d, "--device", "cpu", "--max-samples", 3], capsys)
    assert "below the 10 classes" in err


@pytest.mark.parametrize("command", [["eval"], ["nc"], ["posthoc", "--method", "tau_norm"]])
@pytest.mark.parametrize("device", ["tpu", "meta", "cuda:x"])
def test_a_device_no_command_knows_is_one_line(command, device, copy, capsys):
    d = copy()
    before = snapshot(d)
    err = run([command[0], d, *command[1:], "--device", device], capsys)
    assert f"device='{device}' is not auto, cpu, cuda or cuda:N" in err
    assert snapshot(d) == before


def test_eval_where_the_data_moved(copy, tmp_path, capsys):
    d = copy()
    err = run(["eval", d, "--device", "cpu", f"data.root={tmp_path / 'gone'}"], capsys)
    assert "gone" in err


# ------------------------------------------------------------------ report and compare
def test_report_survives_missing_files_and_names_damaged_ones(copy, capsys):
    d = copy()
    (d / rundir.METRICS_LOG).unlink()
    run(["report", d], capsys, code=0)  # a report without curves
    assert (d / rundir.REPORT_DIR / "report.md").is_file()
    (d / rundir.METRICS).write_text("{not json")
    err = run(["report", d], capsys)
    assert rundir.METRICS in err


def test_report_into_a_full_disk(copy, monkeypatch, capsys):
    d = copy()
    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(d / rundir.REPORT_DIR))

    monkeypatch.setattr(rundir, "atomic_write_bytes", full)
    monkeypatch.setattr(rundir, "atomic_write_text", full)
    err = run(["report", d], capsys)
    assert "no space left" in err


def test_compare_with_a_damaged_run_and_an_unwritable_out(copy, tmp_path, monkeypatch, capsys):
    a, b = copy("a"), copy("b")
    run(["compare", a, b, "--out", tmp_path / "cmp"], capsys, code=0)
    (b / rundir.METRICS).write_text("[1, 2")
    err = run(["compare", a, b, "--out", tmp_path / "cmp2"], capsys)
    assert str(b) in err


# ------------------------------------------------------------------ grid
def test_grid_faults(copy, tmp_path, tiny_learnable_fmnist, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("runs: [\n")
    err = run(["grid", bad], capsys)
    assert "not valid YAML" in err
    # a run whose checkpoint is damaged: the grid reports it failed (exit 1) and goes on
    g = tmp_path / "g"
    grid = tmp_path / "grid.yaml"
    grid.write_text(json.dumps({"out": str(g), "runs": [
        {"config": "fmnist_lt_ce", "name": "broken", "overrides": [f"data.root={tiny_learnable_fmnist}", *FAST,
                                                                    "train.epochs=2"]}]}))
    (g / "broken").mkdir(parents=True)
    shutil.copy(copy() / rundir.CHECKPOINT, g / "broken" / rundir.CHECKPOINT)
    BREAKS["truncated"](g / "broken" / rundir.CHECKPOINT)
    rc = cli_main(["grid", str(grid)])
    out, err = capsys.readouterr()
    assert rc == 1 and "Traceback" not in err and "FAILED broken" in out
    assert "damaged or incomplete" in (g / "broken" / rundir.LOG).read_text()


# ------------------------------------------------------------------ kill -9 and resume
def test_kill_at_a_random_step_then_resume_gives_the_uninterrupted_run(tiny_learnable_fmnist, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    argv = [sys.executable, "-m", "allnc", *map(str, train_argv(tiny_learnable_fmnist, tmp_path / "x", "train.epochs=3"))]
    full = subprocess.run([a if a != str(tmp_path / "x") else str(tmp_path / "full") for a in argv], env=env,
                          capture_output=True, text=True, timeout=300)
    assert full.returncode == 0, full.stderr[-2000:]
    p = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ck = tmp_path / "x" / rundir.CHECKPOINT
    deadline = time.time() + 240
    while not ck.exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    time.sleep(random.uniform(0.0, 1.5))  # somewhere in the second or third epoch
    p.send_signal(signal.SIGKILL)
    p.wait()
    r = subprocess.run([sys.executable, "-m", "allnc", "train", "--out", str(tmp_path / "x"), "--resume"], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    a = torch.load(tmp_path / "full" / rundir.CHECKPOINT, weights_only=True)["method"]
    b = torch.load(ck, weights_only=True)["method"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    ma = json.loads((tmp_path / "full" / rundir.METRICS).read_text())
    mb = json.loads((tmp_path / "x" / rundir.METRICS).read_text())
    assert ma["per_class"] == mb["per_class"]
    assert [h["epoch"] for h in rundir.read_jsonl(tmp_path / "x" / rundir.METRICS_LOG)] == [1, 2, 3]


# ------------------------------------------------------------------ the data a run was trained on
def _folder(root, tiny_image_folder, classes, channels=3, seed=0):
    rng = np.random.RandomState(seed)
    y = np.repeat(np.arange(len(classes)), 6)
    for split in ("train", "test"):
        x = rng.randint(0, 255, size=(len(y), 8, 8, channels)).astype(np.uint8)
        tiny_image_folder(root, split, x, y, classes)
    return root


def test_other_data_under_data_root_is_one_line_not_a_wrong_result(tmp_path, tiny_image_folder, capsys):
    """Class folders are sorted into classifier rows: data whose classes differ from the run's
    (renamed, added) would be scored against the wrong rows or fail to load; each command says
    so in one line instead, and a resume refuses to go on with other data."""
    base = ["data.name=imagefolder", "data.imbalance_factor=1", "model.width=8", "train.batch_size=6", "device=cpu",
            "data.num_workers=0", "train.warmup_epochs=0", "train.progress=false", "train.ckpt_every=1"]
    good = _folder(tmp_path / "abc", tiny_image_folder, ["ant", "bee", "cat"])
    d = tmp_path / "run"
    run(["train", "--config", "cifar10_lt_ce", "--out", d, f"data.root={good}", "train.epochs=2", *base], capsys,
        code=0)
    renamed = _folder(tmp_path / "abz", tiny_image_folder, ["ant", "bee", "zebra"])
    more = _folder(tmp_path / "abcd", tiny_image_folder, ["ant", "bee", "cat", "dog"])
    grey = _folder(tmp_path / "grey", tiny_image_folder, ["ant", "bee", "cat"], channels=1)
    before = snapshot(d)
    for cmd in (["eval", d], ["nc", d], ["posthoc", d, "--method", "tau_norm"]):
        err = run([*cmd, "--device", "cpu", f"data.root={renamed}"], capsys)
        assert "trained on data with classes ['ant', 'bee', 'cat']" in err and "['ant', 'bee', 'zebra']" in err
        assert "point data.root at the data it was trained on" in err
        assert "classes" in run([*cmd, "--device", "cpu", f"data.root={more}"], capsys)
    assert "image channels 3" in run(["eval", d, "--device", "cpu", f"data.root={grey}"], capsys)
    assert snapshot(d) == before
    # the same data elsewhere is fine, and so is the right data after a refusal
    run(["eval", d, "--device", "cpu", f"data.root={good}"], capsys, code=0)
    # a run checkpointed at epoch 1 resumes only on its own data
    (d / rundir.METRICS).unlink()
    ck = torch.load(d / rundir.CHECKPOINT, weights_only=True)
    assert ck["data_facts"] == {"classes": ["ant", "bee", "cat"], "class_counts": [6, 6, 6], "in_channels": 3}
    assert "classes" in run(["train", "--out", d, "--resume", f"data.root={renamed}"], capsys)
    # cRT may train new classes on a backbone, but not other image channels
    crt = ["train", "--config", "cifar10_lt_crt", "train.epochs=1", f"init_from={d}", *base]
    run([*crt, "--out", tmp_path / "crt4", f"data.root={more}"], capsys, code=0)
    assert "image channels 3" in run([*crt, "--out", tmp_path / "crtg", f"data.root={grey}"], capsys)


def test_a_reader_that_stops_early_is_not_an_error():
    """`allnc config --keys | head -1`: the pipe closes after one line; the command stops quietly."""
    p = subprocess.Popen([sys.executable, "-m", "allnc", "config", "--keys"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    p.stdout.close()  # before the command writes a line (its imports take a while): every write finds no reader
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 0 and err == "", err


def test_file_errors_say_what_is_in_the_way():
    e = OSError(errno.EEXIST, "File exists", "runs/out")
    assert rundir.describe_os_error(e, "creating") == ("creating runs/out failed: a file is in the way where a "
                                                      "folder is needed; choose another path")
    assert "a file operation failed: no space left" in rundir.describe_os_error(OSError(errno.ENOSPC, "x"),
                                                                               "a file operation")


def test_usage_errors_name_what_is_missing_and_what_is_extra(capsys):
    """argparse would call the optional overrides required; --keys and --list ignored a name."""
    for cmd, missing in (("eval", "run_dir"), ("nc", "run_dir"), ("posthoc", "run_dir, --method")):
        with pytest.raises(SystemExit):
            cli_main([cmd])
        assert capsys.readouterr().err.splitlines()[-1].endswith(f"the following arguments are required: {missing}")
    for argv in (["config", "--keys", "bogus"], ["config", "--list", "x=1"]):
        assert cli_main(argv) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.startswith(f"allnc: error: {argv[1]} covers every config") and argv[2] in err

"""Grids through submitit (allnc.grid.submit): the job options of slurm:, a two-run grid on
submitit's local executor (skip, resume, summary), and one real tiny training run."""
from __future__ import annotations

import json
import sys
import time

import pytest
import yaml

from allnc.cli import main as cli_main
from allnc.errors import ConfigError
from allnc.grid import RunSpec
from allnc.grid.submit import GridJob, executor_parameters, submit_grid

# a fake training run (as in test_grid.py): metrics.json from its overrides, and whether it resumed
FAKE = r"""
import json, sys, time
from pathlib import Path
out = Path(sys.argv[1]); resume = sys.argv[2] == "1"; kv = dict(a.split("=", 1) for a in sys.argv[3:])
print("fake run", out.name, "resume" if resume else "fresh", flush=True)
print("to stderr too", file=sys.stderr, flush=True)
seed = int(kv.get("seed", "0"))
m = {"top1": 40.0 + 2 * seed + float(kv.get("bonus", "0")), "groups": {"many": 60.0, "medium": 40.0, "few": 10.0},
     "resumed": resume}
(out / "metrics.json").write_text(json.dumps(m))
"""


def fake_command(spec: RunSpec, resume: bool) -> list[str]:
    return [sys.executable, "-c", FAKE, str(spec.run_dir), "1" if resume else "0", *spec.overrides]


@pytest.fixture
def by_value():
    """The jobs unpickle in fresh processes that cannot import this test module: send its
    functions by value."""
    cloudpickle = pytest.importorskip("cloudpickle")
    pytest.importorskip("submitit")
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


# ------------------------------------------------------------------- job options
def test_slurm_options_become_submitit_parameters():
    data = {"slurm": {"partition": "gpu", "time": "1-02:30:00", "gpus_per_node": 1, "cpus_per_task": 8,
                      "mem_gb": 32, "setup": "source .venv/bin/activate", "additional": {"reservation": "r1"}}}
    p = executor_parameters(data, "slurm", 3, "sweep")
    assert p == {"name": "allnc-sweep", "nodes": 1, "tasks_per_node": 1, "slurm_partition": "gpu",
                 "timeout_min": 24 * 60 + 150, "gpus_per_node": 1, "cpus_per_task": 8, "mem_gb": 32,
                 "slurm_setup": ["source .venv/bin/activate"], "slurm_additional_parameters": {"reservation": "r1"},
                 "slurm_array_parallelism": 3}
    local = executor_parameters(data, "local", 3, "sweep")
    assert not any(k.startswith("slurm_") for k in local) and local["timeout_min"] == 1590
    assert executor_parameters({}, "local", 1, "g")["timeout_min"] == 7 * 24 * 60  # not submitit's 2 minutes
    for t, minutes in ((240, 240), ("4:00:00", 240), ("30:00", 30), ("90", 90), ("2-0", 2880)):
        assert executor_parameters({"slurm": {"time": t}}, "slurm", 1, "g")["timeout_min"] == minutes


def test_slurm_option_errors():
    with pytest.raises(ConfigError, match="did you mean 'partition'"):
        executor_parameters({"slurm": {"partiton": "gpu", "time": 5}}, "slurm", 1, "g")
    with pytest.raises(ConfigError, match="needs the grid's slurm.time"):
        executor_parameters({"slurm": {"partition": "gpu"}}, "slurm", 1, "g")
    with pytest.raises(ConfigError, match="slurm.time='soon'"):
        executor_parameters({"slurm": {"time": "soon"}}, "slurm", 1, "g")
    with pytest.raises(ConfigError, match="gpus_per_node"):
        executor_parameters({"slurm": {"time": 5, "gpus_per_node": "two"}}, "slurm", 1, "g")


def test_cli_dry_run_lists_the_jobs(tmp_path, capsys):
    grid = {"configs": ["fmnist_lt_ce"], "overrides": {"train.lr": [0.1, 0.05]}, "out": str(tmp_path / "g"),
            "slurm": {"partition": "gpu", "time": 60, "gpus_per_node": 1}}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    assert cli_main(["grid", str(path), "--executor", "slurm", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "as submitit slurm jobs" in out and "slurm_partition=gpu" in out and "timeout_min=60" in out
    assert out.count(" -m allnc train --config fmnist_lt_ce") == 2
    assert not (tmp_path / "g").exists()
    with pytest.raises(SystemExit):
        cli_main(["grid", str(path), "--executor", "pbs"])


# ------------------------------------------------------------------- running
def test_two_run_grid_through_the_local_executor(tmp_path, by_value):
    out = tmp_path / "grid"
    grid = {"runs": [{"config": "a", "overrides": ["bonus=1"]}, {"config": "b"}], "seeds": [0],
            "max_concurrent": 2, "out": str(out), "slurm": {"time": 10}}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    (out / "b__seed0").mkdir(parents=True)
    (out / "b__seed0" / "checkpoint.pt").write_bytes(b"")  # an interrupted run: the job resumes it
    lines: list[str] = []
    t0 = time.monotonic()
    res = submit_grid(path, executor="local", command=fake_command, log=lines.append, poll_s=0.2)
    assert res.failures == 0 and sorted(s.name for s in res.done) == ["a__bonus=1__seed0", "b__seed0"], lines
    a = json.loads((out / "a__bonus=1__seed0" / "metrics.json").read_text())
    b = json.loads((out / "b__seed0" / "metrics.json").read_text())
    assert not a["resumed"] and b["resumed"]
    log = (out / "a__bonus=1__seed0" / "log.txt").read_text()
    assert "fake run a__bonus=1__seed0 fresh" in log and "to stderr too" in log and "allnc grid (submitit)" in log
    summary = (out / "summary.md").read_text()
    rows = {ln.split("|")[1].strip(): ln for ln in summary.splitlines() if ln.startswith("| ")}
    assert summary == res.summary and "| 1/1 | 41.00 |" in rows["a__bonus=1"] and "| 1/1 | 40.00 |" in rows["b"]
    assert (out / "_submitit").is_dir()
    print(f"two fake runs through submitit's local executor: {time.monotonic() - t0:.1f} s")

    again = submit_grid(path, executor="local", command=fake_command, log=lines.append, poll_s=0.2)
    assert len(again.skipped) == 2 and not again.done and not again.failed


def test_job_sets_aside_an_attempt_without_checkpoint(tmp_path):
    out = tmp_path / "g"
    spec = RunSpec("r", "r", "a", ["bonus=2"], None, out / "r")
    spec.run_dir.mkdir(parents=True)
    (spec.run_dir / "config.yaml").write_text("x: 1\n")  # died before its first checkpoint
    assert GridJob(spec, out, fake_command)() == 0
    assert json.loads((spec.run_dir / "metrics.json").read_text())["top1"] == 42.0
    assert len(list((out / "_attempts").iterdir())) == 1
    assert GridJob(spec, out, fake_command)() == 0  # finished: nothing to do


def test_one_real_tiny_training_run_through_submitit(tiny_learnable_fmnist, tmp_path, by_value):
    out = tmp_path / "grid"
    fast = ["device=cpu", "train.progress=false", "model.width=8", "train.batch_size=32", "train.warmup_epochs=0",
            "train.schedule=constant", "train.lr=0.05", "data.num_workers=0", "train.epochs=2",
            "data.imbalance_factor=10", f"data.root={tiny_learnable_fmnist}"]
    grid = {"runs": [{"config": "fmnist_lt_ce", "name": "tiny"}], "extra_overrides": fast, "out": str(out),
            "slurm": {"time": 10}}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    t0 = time.monotonic()
    res = submit_grid(path, executor="local", log=print, poll_s=0.5)  # default_command: python -m allnc train
    assert res.failures == 0 and [s.name for s in res.done] == ["tiny"], res.reasons
    run = out / "tiny"
    m = json.loads((run / "metrics.json").read_text())
    assert m["epoch"] == 2 and len((run / "metrics.jsonl").read_text().splitlines()) == 2
    log = (run / "log.txt").read_text()
    assert "-m allnc train --config fmnist_lt_ce --out" in log and "epoch   2/2" in log
    row = next(ln for ln in (out / "summary.md").read_text().splitlines() if ln.startswith("| tiny |"))
    assert f"| 1/1 | {m['top1']:.2f} |" in row
    print(f"one real tiny run through submitit's local executor: {time.monotonic() - t0:.1f} s")

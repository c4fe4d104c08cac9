"""The grid runner (allnc.grid): expansion, concurrent runs with failures, resume, summaries.
Runs use a command factory of tiny ``python -c`` scripts, not the training CLI."""
from __future__ import annotations

import csv
import json
import math
import os
import sys
import time
from pathlib import Path

import pytest
import yaml

from allnc.errors import ConfigError
from allnc.grid import RunSpec, default_command, expand_grid, run_grid, summarize

# a fake training run: writes metrics.json from its overrides (top1 = 40 + seed + lr-ish
# offset; validation top-1 = val + seed when val=V is given), records start/end times and
# whether it was resumed; exits 1 when fail=1
FAKE = r"""
import json, os, sys, time
from pathlib import Path
out = Path(sys.argv[1]); resume = sys.argv[2] == "1"; kv = dict(a.split("=", 1) for a in sys.argv[3:])
t0 = time.time()
print("fake run", out.name, "resume" if resume else "fresh", flush=True)
time.sleep(float(kv.get("sleep", "0")))
if kv.get("fail") == "1":
    print("boom: simulated failure", file=sys.stderr)
    sys.exit(1)
seed = int(kv.get("seed", "0"))
m = {"top1": 40.0 + 2 * seed + float(kv.get("bonus", "0")),
     "groups": {"many": 60.0 + seed, "medium": 40.0, "few": None if kv.get("nofew") else 10.0 + 3 * seed},
     "resumed": resume, "t0": t0, "t1": time.time(), "omp": os.environ.get("OMP_NUM_THREADS")}
if "val" in kv:
    m["val"] = {"top1": float(kv["val"]) + seed}
(out / "metrics.json").write_text(json.dumps(m))
"""


def fake_command(spec: RunSpec, resume: bool) -> list[str]:
    return [sys.executable, "-c", FAKE, str(spec.run_dir), "1" if resume else "0", *spec.overrides]


# ------------------------------------------------------------------------ expansion
def test_product_expansion_counts_and_names(tmp_path):
    spec = {
        "configs": ["cifar10_lt_ce", "sub/my_exp.yaml"],
        "overrides": {"train.lr": [0.1, 0.05], "method.sampler": ["instance", "balanced", "sqrt"]},
        "seeds": [0, 1],
        "extra_overrides": ["train.epochs=2"],
        "out": str(tmp_path / "g"),
    }
    runs = expand_grid(spec)
    assert len(runs) == 2 * (2 * 3) * 2
    names = [r.name for r in runs]
    assert len(set(names)) == len(names)
    assert names[0] == "cifar10_lt_ce__train.lr=0.1__method.sampler=instance__seed0"
    assert names[1] == "cifar10_lt_ce__train.lr=0.1__method.sampler=instance__seed1"
    assert "my_exp__train.lr=0.05__method.sampler=sqrt__seed1" in names
    r = runs[0]
    assert r.run_dir == tmp_path / "g" / r.name
    assert r.overrides == ["train.lr=0.1", "method.sampler=instance", "train.epochs=2", "seed=0"]
    assert r.group == "cifar10_lt_ce__train.lr=0.1__method.sampler=instance" and r.seed == 0
    assert r.config == "cifar10_lt_ce"


def test_run_names_keep_the_sign_and_tell_values_apart(tmp_path):
    spec = {"configs": ["fmnist_lt_ce"], "overrides": {"method.la.tau": [-1, 1, -0.5, "x y"]}, "out": str(tmp_path)}
    names = [r.name for r in expand_grid(spec)]
    assert names == ["fmnist_lt_ce__method.la.tau=-1", "fmnist_lt_ce__method.la.tau=1",
                     "fmnist_lt_ce__method.la.tau=-0.5", "fmnist_lt_ce__method.la.tau=x-y"]


def test_explicit_runs_plus_product_and_values(tmp_path):
    (tmp_path / "mine.yaml").write_text("train: {epochs: 1}\n")
    spec = {
        "runs": [
            {"config": "a", "overrides": ["x.y=1"], "name": "first"},
            {"config": "mine.yaml", "overrides": ["train.milestones=[10, 20]"]},
            "b",
        ],
        "configs": ["c"],
        "overrides": {"train.milestones": [[100, 150]], "train.lr": [1e-5]},
        "seeds": [3],
        "out": "somewhere",
    }
    runs = expand_grid(spec, base_dir=tmp_path)
    assert [r.name for r in runs] == [
        "first__seed3",
        "mine__train.milestones=10-20__seed3",
        "b__seed3",
        "c__train.milestones=100-150__train.lr=1.0e-05__seed3",
    ]
    assert runs[1].config == str((tmp_path / "mine.yaml").resolve())  # found next to the grid file
    assert runs[3].overrides[:2] == ["train.milestones=[100, 150]", "train.lr=1.0e-05"]
    assert yaml.safe_load(runs[3].overrides[1].split("=", 1)[1]) == 1e-5
    assert runs[0].run_dir == Path("somewhere") / "first__seed3"


def test_no_seeds_keeps_the_config_seed():
    runs = expand_grid({"configs": ["a"], "overrides": {"k.v": [1, 2]}})
    assert [r.name for r in runs] == ["a__k.v=1", "a__k.v=2"]
    assert all(r.seed is None and not any(o.startswith("seed=") for o in r.overrides) for r in runs)


def test_grid_errors():
    with pytest.raises(ConfigError, match="did you mean 'seeds'"):
        expand_grid({"configs": ["a"], "sedes": [0]})
    with pytest.raises(ConfigError, match="share the run directory"):
        expand_grid({"runs": [{"config": "a"}, {"config": "a"}]})
    with pytest.raises(ConfigError, match="key=value"):
        expand_grid({"runs": [{"config": "a", "overrides": ["nonsense"]}]})
    with pytest.raises(ConfigError, match="no runs"):
        expand_grid({"seeds": [0]})
    with pytest.raises(ConfigError, match="seed"):
        expand_grid({"runs": [{"config": "a", "overrides": ["seed=1"]}], "seeds": [0, 1]})


def test_default_command():
    r = expand_grid({"runs": [{"config": "a", "overrides": ["train.lr=0.1"]}], "seeds": [2], "out": "o"})[0]
    cmd = default_command(r, resume=False)
    assert cmd[:8] == [sys.executable, "-m", "allnc", "train", "--config", "a", "--out", str(Path("o") / r.name)]
    assert cmd[8:] == ["train.lr=0.1", "seed=2"]
    assert "--resume" in default_command(r, resume=True)


# ---------------------------------------------------------------------------- running
def test_failing_run_is_reported_and_the_others_finish(tmp_path):
    out = tmp_path / "grid"
    grid = {
        "runs": [{"config": "ok", "overrides": ["bonus=1"]}, {"config": "bad", "overrides": ["fail=1"]}],
        "configs": ["prod"],
        "overrides": {"bonus": [0, 5]},
        "seeds": [0, 1],
        "max_concurrent": 3,
        "out": str(out),
    }
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    lines: list[str] = []
    res = run_grid(path, command=fake_command, log=lines.append)
    assert res.failures == 2 and sorted(s.name for s in res.failed) == ["bad__fail=1__seed0", "bad__fail=1__seed1"]
    assert len(res.done) == 6 and not res.skipped
    for s in res.done:
        assert (s.run_dir / "metrics.json").is_file()
        assert "fake run" in (s.run_dir / "log.txt").read_text()
    bad = out / "bad__fail=1__seed0"
    assert "boom: simulated failure" in (bad / "log.txt").read_text()  # stderr goes to the log too
    assert not (bad / "metrics.json").exists()
    assert any("FAILED bad__fail=1__seed0" in ln for ln in lines)
    summary = (out / "summary.md").read_text()
    assert summary == res.summary and "| prod__bonus=5 | – | 2/2 | 46.00 ± 1.41 |" in summary
    assert "| bad__fail=1 | – | 0/2 | – | – | – | – |" in summary

    # running the grid again resumes it: finished runs are skipped, failed ones retried,
    # a run with a checkpoint but no metrics.json gets --resume
    (out / "ok__bonus=1__seed1" / "metrics.json").unlink()
    (out / "ok__bonus=1__seed1" / "checkpoint.pt").write_bytes(b"x")
    res2 = run_grid(path, command=fake_command, log=lines.append)
    assert len(res2.skipped) == 5 and [s.name for s in res2.done] == ["ok__bonus=1__seed1"]
    assert res2.failures == 2
    assert json.loads((out / "ok__bonus=1__seed1" / "metrics.json").read_text())["resumed"] is True
    assert json.loads((out / "ok__bonus=1__seed0" / "metrics.json").read_text())["resumed"] is False


def test_max_concurrent_is_respected(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    grid = {"configs": ["c"], "overrides": {"sleep": [0.4]}, "seeds": [0, 1, 2, 3], "max_concurrent": 2,
            "out": str(tmp_path / "g")}
    t = time.monotonic()
    res = run_grid(grid, command=fake_command, log=lambda s: None)
    assert res.failures == 0 and len(res.done) == 4
    spans = [json.loads((s.run_dir / "metrics.json").read_text()) for s in res.done]
    events = sorted([(m["t0"], 1) for m in spans] + [(m["t1"], -1) for m in spans])
    live = peak = 0
    for _, d in events:
        live += d
        peak = max(peak, live)
    assert peak == 2
    # concurrent runs share the CPU cores instead of oversubscribing them
    assert all(m["omp"] == str(max(1, (os.cpu_count() or 1) // 2)) for m in spans)
    assert time.monotonic() - t >= 0.8  # two waves of 0.4 s


def test_dry_run_starts_nothing(tmp_path):
    lines: list[str] = []
    res = run_grid({"configs": ["c"], "seeds": [0, 1], "out": str(tmp_path / "g")}, dry_run=True,
                   command=fake_command, log=lines.append)
    assert res.dry_run and not res.done and not res.failed
    assert not (tmp_path / "g").exists()
    assert sum("c__seed" in ln for ln in lines) == 2


# ---------------------------------------------------------------------------- summary
def _metrics(d: Path, top1, many, medium, few):
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps({"top1": top1, "groups": {"many": many, "medium": medium, "few": few}}))
    return d


def test_summary_mean_and_std_over_seeds(tmp_path):
    dirs = [
        _metrics(tmp_path / "la__tau=1__seed0", 40.0, 70.0, 30.0, 10.0),
        _metrics(tmp_path / "la__tau=1__seed1", 42.0, 71.0, 31.0, 12.0),
        _metrics(tmp_path / "la__tau=1__seed2", 47.0, 72.0, 35.0, None),
        _metrics(tmp_path / "ce__seed0", 39.5, 80.0, 20.0, 1.0),
        tmp_path / "ce__seed1",  # not finished
        _metrics(tmp_path / "single", 50.0, None, None, None),
    ]
    table = summarize(dirs)
    rows = [ln for ln in table.splitlines() if ln.startswith("| ")]
    assert rows[0] == "| run | method | seeds | top1 | many | medium | few |"
    # top1 40, 42, 47: mean 43, sample std sqrt(13) = 3.61; few 10, 12 (a null is left out)
    assert rows[1] == "| la__tau=1 | – | 3/3 | 43.00 ± 3.61 | 71.00 ± 1.00 | 32.00 ± 2.65 | 11.00 ± 1.41 |"
    assert rows[2] == "| ce | – | 1/2 | 39.50 | 80.00 | 20.00 | 1.00 |"
    assert rows[3] == "| single | – | 1/1 | 50.00 | – | – | – |"


def test_summary_md_csv_json_agree(tmp_path):
    """The grid writes summary.md, .csv and .json of the same rows; validation top-1 appears
    where runs have metrics.json["val"]["top1"]."""
    out = tmp_path / "g"
    grid = {"runs": [{"config": "v", "overrides": ["val=30", "bonus=1"]},
                     {"config": "plain", "overrides": ["nofew=1"]},
                     {"config": "bad", "overrides": ["fail=1"]}],
            "seeds": [0, 1], "max_concurrent": 2, "out": str(out)}
    res = run_grid(grid, command=fake_command, log=lambda m: None)
    assert len(res.done) == 4 and res.failures == 2
    md = (out / "summary.md").read_text()
    assert md == res.summary
    rows = json.loads((out / "summary.json").read_text())
    with open(out / "summary.csv", newline="") as f:
        table = list(csv.reader(f))
    header, cells = table[0], table[1:]
    assert isinstance(rows, list) and [r["run"] for r in rows] == ["v__val=30__bonus=1", "plain__nofew=1", "bad__fail=1"]
    assert header == list(rows[0]) and len(cells) == len(rows)
    md_rows = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert md_rows[0] == "| run | method | seeds | top1 | many | medium | few | val top1 |" and len(md_rows) == len(rows) + 1
    cols = ("top1", "many", "medium", "few", "val_top1")
    for row, line, mdline in zip(rows, cells, md_rows[1:]):
        for key, cell in zip(header, line):  # CSV and JSON: the same values
            v = row[key]
            if v is None:
                assert cell == ""
            elif isinstance(v, str):
                assert cell == v
            else:
                assert isinstance(v, (int, float)) and float(cell) == v
        expect = [row["run"], row["method"] or "–", f"{row['seeds_finished']}/{row['seeds_total']}"]
        for c in cols:  # markdown: the same numbers, rounded
            m, s = row[f"{c}_mean"], row[f"{c}_std"]
            expect.append("–" if m is None else f"{m:.2f}" if s is None else f"{m:.2f} ± {s:.2f}")
        assert mdline == "| " + " | ".join(expect) + " |"
    v, plain, bad = rows
    assert (v["seeds_finished"], v["seeds_total"]) == (2, 2)
    assert v["top1_mean"] == 42.0 and math.isclose(v["top1_std"], math.sqrt(2))  # 41, 43
    assert v["val_top1_mean"] == 30.5 and math.isclose(v["val_top1_std"], math.sqrt(0.5))
    assert plain["few_mean"] is None and plain["val_top1_mean"] is None and plain["many_mean"] == 60.5
    assert bad["seeds_finished"] == 0 and all(bad[f"{c}_{s}"] is None for c in cols for s in ("mean", "std"))
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]  # written atomically


# a fake trainer with the real one's rule: a new run needs an empty (or missing) directory
STRICT = r"""
import json, sys
from pathlib import Path
out = Path(sys.argv[1]); resume = sys.argv[2] == "1"
if not resume and out.exists() and any(out.iterdir()):
    print("error: run directory not empty:", sorted(p.name for p in out.iterdir()), file=sys.stderr)
    sys.exit(2)
out.mkdir(parents=True, exist_ok=True)
(out / "config.yaml").write_text("seed: 0\n")
print("epoch 1 done", flush=True)
(out / "metrics.json").write_text(json.dumps({"top1": 50.0, "groups": {"many": 1, "medium": 2, "few": 3}}))
"""


def strict_command(spec: RunSpec, resume: bool) -> list[str]:
    return [sys.executable, "-c", STRICT, str(spec.run_dir), "1" if resume else "0"]


def test_log_does_not_break_the_trainers_empty_directory_rule(tmp_path):
    out = tmp_path / "g"
    stale = out / "c__seed1"  # an attempt that died before its first checkpoint
    stale.mkdir(parents=True)
    (stale / "config.yaml").write_text("old")
    (stale / "log.txt").write_text("old log\n")
    res = run_grid({"configs": ["c"], "seeds": [0, 1], "out": str(out)}, command=strict_command,
                   log=lambda s: None)
    assert res.failures == 0 and len(res.done) == 2, res.reasons
    for s in res.done:
        text = (s.run_dir / "log.txt").read_text()
        assert text.startswith("# allnc grid") and "epoch 1 done" in text and "old log" not in text
    moved = list((out / "_attempts").iterdir())
    assert len(moved) == 1 and (moved[0] / "log.txt").read_text() == "old log\n"


# ------------------------------------------------------------------------ deadline
def test_deadline_stops_runs_and_reports_them_as_no_result(tmp_path):
    """Runs still going at the deadline are stopped (unfinished), runs still waiting are
    not started; neither leaves a metrics.json. Finished runs reach on_done at once."""
    spec = {"runs": [{"config": "a", "name": "quick", "overrides": ["sleep=0"]},
                     {"config": "b", "name": "slow", "overrides": ["sleep=60"]},
                     {"config": "c", "name": "waiting", "overrides": ["sleep=0"]}],
            "max_concurrent": 2, "out": str(tmp_path / "g")}
    seen = []
    t0 = time.monotonic()
    res = run_grid(spec, command=fake_command, log=lambda m: None, deadline=time.monotonic() + 4,
                   on_done=lambda s, secs: seen.append((s.name, (s.run_dir / "metrics.json").is_file())))
    took = time.monotonic() - t0
    assert [s.name for s in res.done] == ["quick", "waiting"]
    assert [s.name for s in res.unfinished] == ["slow"] and not res.not_started
    assert not (tmp_path / "g" / "slow" / "metrics.json").exists()
    assert seen[0] == ("quick", True) and all(ok for _, ok in seen)
    assert 4 <= took < 30  # stopped at the deadline, not after the 60 s sleep


def test_deadline_leaves_waiting_runs_unstarted(tmp_path):
    spec = {"runs": [{"config": "a", "name": "long", "overrides": ["sleep=60"]},
                     {"config": "b", "name": "next", "overrides": ["sleep=0"]}],
            "max_concurrent": 1, "out": str(tmp_path / "g")}
    res = run_grid(spec, command=fake_command, log=lambda m: None, deadline=time.monotonic() + 2)
    assert [s.name for s in res.unfinished] == ["long"] and [s.name for s in res.not_started] == ["next"]
    assert not res.done and not (tmp_path / "g" / "next").exists()


def test_a_changed_grid_does_not_take_the_old_runs_as_its_own(tmp_path):
    """Runs in the out folder are skipped (finished) or resumed (checkpointed) only where they
    were made with the config the grid now gives; a changed setting is one line naming it."""
    from allnc.config import load_config, to_yaml

    out = tmp_path / "g"
    grid = {"configs": ["fmnist_lt_ce"], "seeds": [0], "out": str(out),
            "extra_overrides": ["train.epochs=1", "data.root=/nowhere"]}
    spec = expand_grid(grid)[0]
    spec.run_dir.mkdir(parents=True)
    (spec.run_dir / "config.yaml").write_text(to_yaml(load_config(spec.config, spec.overrides)))
    (spec.run_dir / "metrics.json").write_text("{}")
    assert [s.name for s in run_grid(grid, dry_run=True, log=lambda *_: None).skipped] == [spec.name]
    moved = {**grid, "extra_overrides": ["train.epochs=1", "data.root=/elsewhere"]}  # a runtime key may differ
    assert len(run_grid(moved, dry_run=True, log=lambda *_: None).skipped) == 1
    changed = {**grid, "extra_overrides": ["train.epochs=2", "data.root=/nowhere"]}
    with pytest.raises(ConfigError, match=r"holds a run made with train.epochs=1, but the grid now gives "
                                          r"train.epochs=2; give the changed grid another out folder"):
        run_grid(changed, dry_run=True, log=lambda *_: None)
    (spec.run_dir / "metrics.json").unlink()  # a checkpointed run would be resumed: the same check
    (spec.run_dir / "checkpoint.pt").write_bytes(b"x")
    with pytest.raises(ConfigError, match="train.epochs=1"):
        run_grid(changed, dry_run=True, log=lambda *_: None)
    (spec.run_dir / "checkpoint.pt").unlink()  # an attempt that never checkpointed is started again
    assert run_grid(changed, dry_run=True, log=lambda *_: None).skipped == []

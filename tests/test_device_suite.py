"""The device suite end to end in its tiny mode: the same command as on a GPU (environment,
data, smoke, speed, the first plan's seven methods, results files, output tarballs), on the
CPU with tiny generated data and one epoch."""
import importlib.util
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# the suite is a benchmark script, not package code: load it from its file
_spec = importlib.util.spec_from_file_location("device_suite", ROOT / "benchmarks" / "device_suite.py")
suite_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(suite_mod)
PLANS, throughput = suite_mod.PLANS, suite_mod.throughput


@pytest.fixture(scope="module")
def tiny_suite(tmp_path_factory):
    base = tmp_path_factory.mktemp("suite")
    out, results = base / "out", base / "results"
    env = dict(os.environ, PYTHON=sys.executable, ALLNC_COMMIT="0123abc")
    r = subprocess.run(["bash", str(ROOT / "scripts" / "device_suite.sh"), "--tiny", str(out), "--results", str(results)],
                       capture_output=True, text=True, env=env, timeout=600)
    return r, out, results


def test_tiny_suite_runs_every_stage_and_returns_few_flat_files(tiny_suite):
    r, out, results = tiny_suite
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert all((out / f).is_file() for f in files) and len(files) <= 8  # the device returns at most 8 flat files
    assert {"suite.log", "env.json", "speed.json", "suite.json", "results.tar.gz", "runs.tar.gz", "models.tar"} <= set(files)
    env = json.loads((out / "env.json").read_text())
    assert env["git_commit"] == "0123abc" and env["versions"]["torch"] and env["mps"]["started"] is False
    suite = json.loads((out / "suite.json").read_text())
    smoke = suite["stages"]["smoke"]["runs"]
    assert set(smoke) == {"smoke_ce", "smoke_allnc"}
    assert all(v["ok"] and v["compile"]["requested"] and v["compile"]["used"] for v in smoke.values())
    speed = json.loads((out / "speed.json").read_text())
    names = [m["name"] for m in speed["measurements"]]
    assert names == ["conventional", "fast_x1", "fast_x2"] and all(m["images_per_s"] > 0 for m in speed["measurements"])
    assert set(speed["derived"]) >= {"fast_over_conventional_ce", "throughput_2_over_1"}


def test_tiny_suite_writes_one_results_file_per_plan_cell(tiny_suite):
    r, out, results = tiny_suite
    methods = PLANS["first"]["methods"]
    trained = {f"cifar10_lt_{m}__if10__e1__seed0" for m in methods}
    # CE's two post-hoc corrections are two more cells (rows) of the table, and AllNC's mix
    # chosen on validation (its config leaves the mix to a validation split, which it had not) one more
    expect = trained | {f"cifar10_lt_ce__if10__e1__seed0__posthoc_{m}" for m in ("tau_norm", "logit_adjust")} | {
        "cifar10_lt_allnc__if10__e1__seed0__posthoc_inference_mix"}
    got = {p.stem for p in results.glob("*.json")}
    assert got == expect
    for p in results.glob("*.json"):
        rec = json.loads(p.read_text())
        assert rec["cell"] == p.stem and rec["config"]["train"]["epochs"] == 1
        assert rec["git_commit"] == "0123abc" and rec["versions"]["torch"] and rec["device"].startswith("cpu")
        if p.stem in trained:
            assert rec["nc_train"] and rec["nc_train"]["nc1_cb"] is not None  # the final NC figures
            # where the errors go: every misclassified test image is counted
            n_test = 10 * 4  # the tiny data's test split (make_tiny_cifar: test_per_class=4, 10 classes)
            assert rec["errors"]["errors"] == n_test - round(rec["top1"] * n_test / 100)
        else:
            assert rec["posthoc"]["run_test"]["top1"] == json.loads(
                (results / f"{p.stem.split('__posthoc_')[0]}.json").read_text())["top1"]
        assert 0 <= rec["top1"] <= 100 and rec["wall_time_s"] > 0
    with tarfile.open(out / "runs.tar.gz") as tf:
        summary = tf.extractfile("summary.md").read().decode()
    for c in trained:
        e = json.loads((results / f"{c}.json").read_text())["errors"]
        want = "-" if e["headward"] is None else f"{e['headward']:.1f} ({e['headward_if_even']:.1f})"
        ece = json.loads((results / f"{c}.json").read_text())["ece"]
        assert f"| {ece:.2f} | {want} |" in [ln for ln in summary.splitlines() if ln.startswith(f"| {c} |")][0]
    with tarfile.open(out / "results.tar.gz") as tf:
        assert sorted(tf.getnames()) == sorted(f"results/{c}.json" for c in expect)
    with tarfile.open(out / "runs.tar.gz") as tf:
        names = tf.getnames()
    assert not any(n.endswith(".pt") for n in names)
    assert all(f"plan/{c}/metrics.json" in names for c in trained)


def test_models_tar_brings_back_each_trained_model_as_a_run_directory(tiny_suite, tmp_path):
    """models.tar holds every trained plan cell as a run directory whose checkpoint has the
    model and no optimizer; `allnc eval` on it, on another machine's folder, gives the test
    top-1 that the results file recorded."""
    r, out, results = tiny_suite
    trained = sorted(f"cifar10_lt_{m}__if10__e1__seed0" for m in PLANS["first"]["methods"])
    with tarfile.open(out / "models.tar") as tf:
        assert sorted({n.split("/")[0] for n in tf.getnames()}) == trained
        tf.extractall(tmp_path, filter="data")
    plan = json.loads((out / "suite.json").read_text())["stages"]["plan"]
    assert sorted(plan["models_tar"]) == trained
    for cell in ("cifar10_lt_allnc__if10__e1__seed0", "cifar10_lt_ldam_drw__if10__e1__seed0"):
        ckpt = torch.load(tmp_path / cell / "checkpoint.pt", weights_only=True)
        assert "optimizer" not in ckpt and ckpt["epoch"] == 1 and ckpt["method"]
        e = subprocess.run([sys.executable, "-m", "allnc", "eval", str(tmp_path / cell), "--json"], capture_output=True,
                           text=True, timeout=300)
        assert e.returncode == 0, e.stderr[-2000:]
        got = json.loads(e.stdout.strip().splitlines()[-1])
        assert got["top1"] == pytest.approx(json.loads((results / f"{cell}.json").read_text())["top1"], abs=1e-9)


def _take(*args):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "take_device_output.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_take_device_output_puts_each_file_where_it_belongs(tiny_suite, tmp_path):
    """The record to benchmarks/results/device_runs/NAME, the results into results/, the models
    under runs/device/NAME, and a stale .data/resume.tar removed (the call left none); a second
    take of the same call, or a results file with other content, is refused in one line."""
    r, out, results = tiny_suite
    root = tmp_path / "checkout"
    (root / ".data").mkdir(parents=True)
    (root / ".data" / "resume.tar").write_bytes(b"an earlier call's")
    t = _take(out, "2026-11-30-h200-a", "--root", root)
    assert t.returncode == 0, t.stderr
    record = root / "benchmarks" / "results" / "device_runs" / "2026-11-30-h200-a"
    assert sorted(p.name for p in record.iterdir()) == ["env.json", "speed.json", "suite.json", "suite.log", "summary.md"]
    assert (record / "suite.log").read_bytes() == (out / "suite.log").read_bytes()
    assert sorted(p.name for p in (root / "results").iterdir()) == sorted(p.name for p in results.iterdir())
    for p in results.iterdir():
        assert (root / "results" / p.name).read_bytes() == p.read_bytes()
    assert not (root / ".data" / "resume.tar").exists() and "earlier .data/resume.tar is removed" in t.stdout
    kept = root / "runs" / "device" / "2026-11-30-h200-a"
    assert (kept / "runs.tar.gz").is_file() and (kept / "cifar10_lt_allnc__if10__e1__seed0" / "checkpoint.pt").is_file()

    again = _take(out, "2026-11-30-h200-a", "--root", root)
    assert again.returncode == 2 and len(again.stderr.strip().splitlines()) == 1 and "--overwrite" in again.stderr
    cell = next((root / "results").iterdir())
    cell.write_text("{}")
    other = _take(out, "2026-11-30-h200-b", "--root", root)
    assert other.returncode == 2 and f"results/{cell.name} exists with other content" in other.stderr
    assert not (root / "benchmarks" / "results" / "device_runs" / "2026-11-30-h200-b").exists()  # nothing written
    assert _take(out, "monday", "--root", root).returncode == 2


def test_models_tar_keeps_to_its_cap_in_finishing_order(tmp_path):
    from allnc.engine.checkpoint import save_checkpoint

    s = suite_mod.Suite(suite_mod.parse(["--tiny", "--out", str(tmp_path / "out"), "--results", str(tmp_path / "res"),
                                         "--work", str(tmp_path / "work")]))
    dirs = []
    for name, n in (("a", 100_000), ("b", 300_000), ("c", 100_000)):
        d = tmp_path / "work" / "plan" / name
        d.mkdir(parents=True)
        save_checkpoint(d / "checkpoint.pt", {"method": {"w": torch.zeros(n)}, "optimizer": {"m": torch.zeros(n)},
                                              "epoch": 3})
        suite_mod.write_slim(d)
        dirs.append(d)
    assert (dirs[0] / suite_mod.SLIM).stat().st_size < 0.6 * (dirs[0] / "checkpoint.pt").stat().st_size
    s.finished = dirs
    s.args.models_cap_mib = (2 * 400_000 + 10_000) / 2**20  # a and c fit together, b fits with neither
    s.pack_models()
    assert s.models_packed == ["a", "c"]  # b does not fit after a; c, after it, still does
    s.args.models_cap_mib = 1e-3
    s.pack_models()
    assert s.models_packed == [] and not (tmp_path / "out" / "models.tar").exists()


def test_tiny_suite_skips_cells_with_results(tiny_suite, tmp_path):
    """Run again on the same results folder: nothing is trained twice, and the smoke, which
    only warms the plan's compiled graphs, is skipped."""
    r, out, results = tiny_suite
    out2 = tmp_path / "again"
    env = dict(os.environ, PYTHON=sys.executable)
    r2 = subprocess.run(["bash", str(ROOT / "scripts" / "device_suite.sh"), "--tiny", str(out2), "--results", str(results),
                         "--no-speed"], capture_output=True, text=True, env=env, timeout=600)
    assert r2.returncode == 0, r2.stdout[-2000:]
    plan = json.loads((out2 / "suite.json").read_text())["stages"]["plan"]
    assert len(plan["skipped"]) == 7 and plan["done"] == []
    stages = json.loads((out2 / "suite.json").read_text())["stages"]
    assert stages["smoke"] == {"skipped": "every plan cell has its results file"}
    assert not (tmp_path / "again-work" / "smoke").exists()


def test_a_smoke_run_killed_by_a_signal_is_retried_and_planned_in_the_form_that_worked(tmp_path, monkeypatch):
    """AllNC's smoke run dies by SIGSEGV (as fixed ETF + DR did on the H200), and so does its
    first retry form (persistent reductions off); the second form (eager) works, so AllNC is
    planned eagerly instead of being left out. The crashes are real processes killed by the
    signal, started through the grid like every run."""
    import signal

    from allnc.grid.runner import default_command

    crash = [sys.executable, "-c", f"import os; os.kill(os.getpid(), {int(signal.SIGSEGV)})"]
    real_grid = suite_mod.run_grid

    def grid(spec, **kw):
        return real_grid(spec, command=lambda s, resume: crash if s.name in ("smoke_allnc", "retry_allnc_0")
                         else default_command(s, resume), **kw)

    monkeypatch.setattr(suite_mod, "run_grid", grid)
    args = ["--tiny", "--methods", "allnc", "--smoke-methods", "allnc", "--no-speed", "--out", str(tmp_path / "out"),
            "--results", str(tmp_path / "res"), "--work", str(tmp_path / "work")]
    assert suite_mod.Suite(suite_mod.parse(args)).run() == 0
    smoke = json.loads((tmp_path / "out" / "suite.json").read_text())["stages"]["smoke"]
    assert smoke["runs"]["smoke_allnc"] == {"ok": False, "why": "exit status -11"}
    tries = smoke["retries"]["allnc"]
    assert tries["train.compile_persistent_reductions=false"] == {"ok": False, "why": "exit status -11"}
    assert tries["train.compile=off"]["ok"] and tries["train.compile=off"]["compile"]["requested"] is False
    assert smoke["method_extra"] == {"allnc": ["train.compile=off"]}
    # a retry worked: the data path is not to blame, so the conventional path is not tried
    assert smoke["plan_extra"] == [] and not (tmp_path / "work" / "smoke_conventional").exists()
    rec = json.loads((tmp_path / "res" / "cifar10_lt_allnc__if10__e1__seed0.json").read_text())
    assert rec["config"]["train"]["compile"] == "off"
    log = (tmp_path / "out" / "suite.log").read_text()
    assert "allnc died (exit status -11)" in log and "allnc is planned with train.compile=off" in log


def test_a_plan_run_killed_by_a_signal_goes_again_in_the_next_form(tmp_path, monkeypatch):
    """No smoke: the plan's AllNC run dies by SIGSEGV until it runs with looped reductions (the
    first retry form); the suite starts it again in that form and it finishes, while the CE
    run beside it finishes at the first try."""
    import signal

    from allnc.grid.runner import default_command

    crash = [sys.executable, "-c", f"import os; os.kill(os.getpid(), {int(signal.SIGSEGV)})"]
    real_grid = suite_mod.run_grid
    started = []

    def command(s, resume):
        started.append(s.name)
        if s.name.startswith("cifar10_lt_allnc") and "train.compile_persistent_reductions=false" not in s.overrides:
            return crash
        return default_command(s, resume)

    monkeypatch.setattr(suite_mod, "run_grid", lambda spec, **kw: real_grid(spec, command=command, **kw))
    args = ["--tiny", "--methods", "allnc", "ce", "--no-smoke", "--no-speed", "--out", str(tmp_path / "out"),
            "--results", str(tmp_path / "res"), "--work", str(tmp_path / "work")]
    assert suite_mod.Suite(suite_mod.parse(args)).run() == 0
    cell, ce = "cifar10_lt_allnc__if10__e1__seed0", "cifar10_lt_ce__if10__e1__seed0"
    assert started.count(cell) == 2 and started.count(ce) == 1
    plan = json.loads((tmp_path / "out" / "suite.json").read_text())["stages"]["plan"]
    assert plan["retried"] == [{cell: "train.compile_persistent_reductions=false"}]
    assert sorted(plan["done"]) == sorted([cell, ce]) and plan["failed"] == {}
    rec = json.loads((tmp_path / "res" / f"{cell}.json").read_text())
    assert rec["config"]["train"]["compile_persistent_reductions"] is False


def test_signal_deaths_the_plan_order_and_the_smoke_methods(tmp_path):
    """Only a negative exit status is a signal. The table plan runs imbalance factor by
    imbalance factor, each one seed by seed, and its first cells are the first plan's. The smoke takes CE,
    AllNC and the methods with cells still to do."""
    assert suite_mod.signal_death("exit status -11") and suite_mod.signal_death("exit status -6")
    assert not suite_mod.signal_death("exit status 1") and not suite_mod.signal_death("stopped at its time limit")
    assert not suite_mod.signal_death(None)

    def suite(*args):
        return suite_mod.Suite(suite_mod.parse([*args, "--data-root", "x", "--out", str(tmp_path / "out"),
                                                "--results", str(tmp_path / "res"), "--work", str(tmp_path / "work")]))

    cells = suite("--plan", "table").plan_cells()
    assert len(cells) == 7 * 3 * 3 and len({c[0] for c in cells}) == len(cells)
    first = suite()
    assert [c[0] for c in cells[:7]] == [c[0] for c in first.plan_cells()]
    assert [(c[2], c[3]) for c in cells[::7]] == [(f, s_) for f in (100.0, 50.0, 10.0) for s_ in (0, 1, 2)]
    assert first.smoke_methods() == ["ce", "allnc", "bbn", "la", "ldam_drw", "etf_dr", "bcl"]
    for cell, cfg, _, _ in first.plan_cells():
        if not cfg.endswith("_etf_dr"):
            (tmp_path / "res" / f"{cell}.json").write_text("{}")
    assert first.smoke_methods() == ["ce", "allnc", "etf_dr"]
    assert suite("--smoke-methods", "la").smoke_methods() == ["la"]


def test_plan_concurrency_never_exceeds_the_measured_n(tmp_path):
    """On a GPU the plan runs at most --concurrency at once, however many cells it has; fewer
    when the measured gain says runs do not scale (2.8 of 7 on the H200: 4 at once)."""
    s = suite_mod.Suite(suite_mod.parse(["--plan", "table", "--data-root", "x", "--out", str(tmp_path / "out"),
                                         "--results", str(tmp_path / "res"), "--work", str(tmp_path / "work")]))
    assert s.on_gpu and s.args.concurrency == 8
    s.summary["env"] = {"mps": {"started": True}}
    assert s.plan_concurrency(57) == 8 and s.plan_concurrency(5) == 5  # not measured, MPS on
    s.summary["env"] = {"mps": {"started": False}}
    assert s.plan_concurrency(57) == 3
    s.speed_figures = {"derived": {"throughput_8_over_1": 6.0}}
    assert s.plan_concurrency(57) == 8
    s.speed_figures = {"derived": {"throughput_8_over_1": 2.8}}
    assert s.plan_concurrency(57) == 4 and s.plan_concurrency(1) == 1


def test_post_hoc_rows_go_to_ce_and_to_mixes_left_to_a_missing_validation_split():
    gbbn = {"method": {"name": "gbbn", "gbbn": {"inference_mix": "auto"}}, "data": {"val_per_class": 0}}
    assert suite_mod.posthoc_corrections("ce", {}) == suite_mod.posthoc_corrections("ce_strong", {}) == (
        "tau_norm", "logit_adjust")
    assert suite_mod.posthoc_corrections("allnc", gbbn) == ("inference_mix",)
    assert suite_mod.posthoc_corrections("allnc", {**gbbn, "data": {"val_per_class": 20}}) == ()  # chose it already
    half = {**gbbn, "method": {"name": "gbbn", "gbbn": {"inference_mix": "half"}}}
    assert suite_mod.posthoc_corrections("bbn", half) == ()  # BBN's own mix, as published
    assert suite_mod.posthoc_corrections("la", {"method": {"name": "la"}}) == ()


def test_throughput_counts_only_the_common_window():
    """Two runs of 100-image epochs: run A trains 0-10 s (1 s epochs), run B 4-14 s (2 s
    epochs). Common window 4-10 s: A contributes 6 epochs (600 images), B 3 (300): 150/s."""
    a = [{"t_end": float(t), "time_s": 1.0} for t in range(1, 11)]
    b = [{"t_end": 4.0 + 2 * k, "time_s": 2.0} for k in range(1, 6)]
    m = throughput([a, b], steps_images=100)
    assert m["window_s"] == pytest.approx(6.0) and m["images_per_s"] == pytest.approx(150.0)
    assert m["epoch_s_mean"] == pytest.approx(1.5)


def test_compile_check_reports_each_backend_and_the_compilers_words():
    """The environment stage's compile check, run here on the CPU: a backend that works gives
    the eager value; one that cannot work is reported with the compiler's own error text."""
    got = suite_mod.compile_check("cpu", ["aot_eager", "no_such_backend"], timeout=300)
    assert got["aot_eager"]["ok"] is True and "error" not in got["aot_eager"]
    assert got["no_such_backend"]["ok"] is False and "no_such_backend" in got["no_such_backend"]["error"]
    assert suite_mod._last_line("a\n  b: why \n\n") == "b: why"


def test_a_failed_inductor_check_starts_the_smoke_from_cudagraphs():
    """inductor failing the environment's compile check sends every smoke run straight to the
    cudagraphs backend; a passed or unfinished check leaves the configured backend."""
    after = suite_mod.backend_after_check
    failed, passed = {"ok": False, "error": "x"}, {"ok": True, "s": 1.0}
    assert after({"inductor": failed, "cudagraphs": passed}, "inductor") == "cudagraphs"
    assert after({"inductor": failed, "cudagraphs": failed}, "inductor") == "cudagraphs"  # it fails fast, then eager
    assert after({"inductor": passed, "cudagraphs": passed}, "inductor") == "inductor"
    assert after({"unfinished": True}, "inductor") == "inductor"
    assert after({}, "inductor") == "inductor"


def test_an_mps_daemon_that_does_not_quit_is_logged_not_raised(monkeypatch):
    """On an H200 the daemon's quit timed out and the exception cost the suite its suite.json:
    stopping MPS now logs the failure, and the MPS variables leave the environment either way."""
    def no_answer(*a, **k):
        raise subprocess.TimeoutExpired(cmd="nvidia-cuda-mps-control", timeout=30)

    monkeypatch.setattr(suite_mod.subprocess, "run", no_answer)
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", "/tmp/mps-pipe")
    said = []
    fake = type("S", (), {"log": lambda self, msg: said.append(msg), "_drop_mps_env": staticmethod(
        suite_mod.Suite._drop_mps_env)})()
    suite_mod.Suite.stop_mps(fake)
    assert len(said) == 1 and "did not quit" in said[0] and "TimeoutExpired" in said[0]
    assert "CUDA_MPS_PIPE_DIRECTORY" not in os.environ


def test_select_resume_takes_the_most_advanced_runs_that_fit(tmp_path):
    """Runs at epochs 3, 7 and 5 (and one without a checkpoint), a cap that holds two of the
    three: the epoch-7 run first, then the epoch-3 one, since 7 and 5 together are too big."""
    from allnc.engine.checkpoint import save_checkpoint

    dirs = {}
    for name, epoch, n in (("a", 3, 1000), ("b", 7, 20000), ("c", 5, 30000)):
        d = dirs[name] = tmp_path / name
        d.mkdir()
        save_checkpoint(d / "checkpoint.pt", {"method": {"w": torch.zeros(n)}, "epoch": epoch})
    (tmp_path / "d").mkdir()
    size = {k: (d / "checkpoint.pt").stat().st_size for k, d in dirs.items()}
    cap = size["b"] + size["a"] + 10
    assert size["b"] + size["c"] > cap
    got = suite_mod.select_resume(suite_mod.resume_candidates([dirs["a"], dirs["b"], dirs["c"], tmp_path / "d"]), cap)
    assert got == [dirs["b"], dirs["a"]]
    assert suite_mod.select_resume(suite_mod.resume_candidates(list(dirs.values())), size["a"] - 1) == []


def test_an_unfinished_run_is_carried_to_the_next_suite_and_finished_there(tmp_path, monkeypatch):
    """A plan run stopped after its epoch-5 checkpoint (of 6) goes into resume.tar; the next
    suite given that file continues it from epoch 5 instead of starting again, and its results
    file says so."""
    from allnc.config import cell_name, load_config
    from allnc.engine.stepper import Stepper
    from allnc.engine.trainer import Trainer

    args = ["--epochs", "6", "--methods", "ce", "--no-smoke", "--no-speed"]
    first = suite_mod.Suite(suite_mod.parse(["--tiny", *args, "--out", str(tmp_path / "out1"), "--results",
                                             str(tmp_path / "res"), "--work", str(tmp_path / "work1")]))
    cell = cell_name("cifar10_lt_ce", 10.0, 6, 0)
    (run,), extra = first.plan_runs([(cell, "cifar10_lt_ce", 10.0, 0)])
    run_dir = tmp_path / "work1" / "plan" / cell

    def stop_in_epoch_6(self, batches, state):
        if state.epoch == 5:
            raise KeyboardInterrupt  # as the deadline's SIGTERM would, after the epoch-5 checkpoint
        return real_step(self, batches, state)

    real_step = Stepper.step
    monkeypatch.setattr(Stepper, "step", stop_in_epoch_6)
    with pytest.raises(KeyboardInterrupt):
        Trainer(load_config(run["config"], [*extra, *run["overrides"]]), run_dir).fit()
    monkeypatch.undo()
    assert not (run_dir / "metrics.json").exists()
    assert first.pack_resume([run_dir]) == [cell]
    with tarfile.open(tmp_path / "out1" / "resume.tar") as tf:
        # log.txt is the grid's (this run was started without one)
        assert sorted(tf.getnames()) == sorted(f"{cell}/{f}" for f in ("checkpoint.pt", "config.yaml", "metrics.jsonl"))

    env = dict(os.environ, PYTHON=sys.executable)
    r = subprocess.run(["bash", str(ROOT / "scripts" / "device_suite.sh"), "--tiny", str(tmp_path / "out2"), *args, "--results",
                        str(tmp_path / "res"), "--work", str(tmp_path / "work2"),
                        "--resume-from", str(tmp_path / "out1" / "resume.tar")],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rec = json.loads((tmp_path / "res" / f"{cell}.json").read_text())
    assert rec["suite"]["resumed_from_epoch"] == 5
    log = (tmp_path / "work2" / "plan" / cell / "log.txt").read_text()
    assert "resume   from epoch 5 of 6" in log
    hist = [json.loads(x) for x in (tmp_path / "work2" / "plan" / cell / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4, 5, 6]
    plan = json.loads((tmp_path / "out2" / "suite.json").read_text())["stages"]["plan"]
    assert plan["resumed"] == {cell: 5} and plan["done"] == [cell] and plan["resume_tar"] == []
    assert not (tmp_path / "out2" / "resume.tar").exists()
    smoke = json.loads((tmp_path / "out2" / "suite.json").read_text())["stages"]["smoke"]
    assert smoke == {"skipped": "--no-smoke"} and not (tmp_path / "work2" / "smoke").exists()


def test_second_stages_follow_their_sources_and_a_source_with_results_is_trained_again_for_its_backbone(tmp_path):
    """cRT starts from the CE run of its own imbalance factor and seed once that has finished
    (seed 0); a CE cell whose results file exists but whose run is not here (seed 1) is trained
    again for cRT's sake, reading no test image and leaving CE's results file as it was."""
    from allnc.config import cell_name
    from allnc.report.results import table_id

    ce0, crt0 = cell_name("cifar10_lt_ce", 10.0, 2, 0), cell_name("cifar10_lt_crt", 10.0, 2, 0)
    ce1, crt1 = cell_name("cifar10_lt_ce", 10.0, 2, 1), cell_name("cifar10_lt_crt", 10.0, 2, 1)
    stages = suite_mod.Suite(suite_mod.parse(["--plan", "stages", "--data-root", "x", "--out", str(tmp_path / "o0"),
                                              "--results", str(tmp_path / "r0"), "--work", str(tmp_path / "w0")]))
    assert not set(stages.smoke_methods()) & set(suite_mod.SECOND_STAGES)  # no source run to start from

    res, work = tmp_path / "res", tmp_path / "work"
    res.mkdir()
    (res / f"{ce1}.json").write_text('{"cell": "an earlier call\'s CE result"}')
    ce1_bytes = (res / f"{ce1}.json").read_bytes()
    env = dict(os.environ, PYTHON=sys.executable, ALLNC_COMMIT="0123abc")
    r = subprocess.run(["bash", str(ROOT / "scripts" / "device_suite.sh"), "--tiny", str(tmp_path / "out"), "--plan",
                        "stages", "--methods", "ce", "crt", "--seeds", "0", "1", "--epochs", "2", "--no-smoke",
                        "--no-speed", "--results", str(res), "--work", str(work)],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    log = (tmp_path / "out" / "suite.log").read_text()

    rec = json.loads((res / f"{crt0}.json").read_text())
    assert rec["config"]["init_from"] == str((work / "plan" / ce0).resolve())
    assert rec["source_cell"] == ce0 and rec["config"]["train"]["epochs"] == 2
    ce_rec = json.loads((res / f"{ce0}.json").read_text())
    assert table_id(rec) == table_id(ce_rec)  # a second stage sits in its source's table

    assert f"plan: {ce1} has its results file but no run here; trained again as the backbone" in log
    assert f"RESULT {ce1}:" not in log and f"RESULT {crt1}:" in log and f"RESULT {ce0}:" in log
    assert (res / f"{ce1}.json").read_bytes() == ce1_bytes
    again = json.loads((work / "plan" / ce1 / "metrics.json").read_text())
    assert again["test_evaluated"] is False and "top1" not in again  # the backbone run read no test image
    rec1 = json.loads((res / f"{crt1}.json").read_text())
    assert rec1["config"]["init_from"] == str((work / "plan" / ce1).resolve()) and rec1["source_cell"] == ce1


def test_resumed_runs_that_got_no_slot_are_carried_on(tmp_path, monkeypatch):
    """Two runs resumed from resume.tar, one slot and no time: the one stopped unfinished and the
    one that never started both go into the next resume.tar (neither checkpoint is dropped)."""
    from allnc.engine.checkpoint import save_checkpoint
    from allnc.grid.expand import RunSpec
    from allnc.grid.runner import GridResult

    s = suite_mod.Suite(suite_mod.parse(["--tiny", "--methods", "ce", "la", "--out", str(tmp_path / "out"), "--results",
                                         str(tmp_path / "res"), "--work", str(tmp_path / "work"), "--epochs", "6"]))
    cells = {m: f"cifar10_lt_{m}__if10__e6__seed0" for m in ("ce", "la")}
    for m, epoch in (("ce", 5), ("la", 3)):
        d = tmp_path / "work" / "plan" / cells[m]
        d.mkdir(parents=True)
        save_checkpoint(d / "checkpoint.pt", {"method": {}, "epoch": epoch})

    def grid(name, runs, conc, until, extra, on_done=None):
        specs = {r["name"]: RunSpec(r["name"], r["name"], r["config"], [], 0, tmp_path / "work" / name / r["name"])
                 for r in runs}
        return GridResult(tmp_path / "work" / name, list(specs.values()), unfinished=[specs[cells["ce"]]],
                          not_started=[specs[cells["la"]]])

    monkeypatch.setattr(s, "grid", grid)
    s.plan()
    plan = s.summary["stages"]["plan"]
    assert plan["resume_tar"] == [cells["ce"], cells["la"]]  # the more advanced first
    with tarfile.open(tmp_path / "out" / "resume.tar") as tf:
        assert sorted(tf.getnames()) == sorted(f"{c}/checkpoint.pt" for c in cells.values())


def _install(env_extra: dict) -> subprocess.CompletedProcess:
    env = {**os.environ, **env_extra}
    return subprocess.run(["bash", str(ROOT / "scripts" / "device_install.sh")], env=env, capture_output=True,
                          text=True, timeout=120)


def test_device_install_refuses_a_python_without_torch_and_a_missing_wheel_folder(tmp_path):
    # the offline install never downloads torch, and says which of its two inputs is missing
    r = _install({"PYTHON": "/bin/false", "WHEELS": str(tmp_path)})
    assert r.returncode == 2 and "has no torch/torchvision" in r.stderr and r.stderr.count("\n") == 1
    r = _install({"PYTHON": sys.executable, "WHEELS": str(tmp_path / "nowhere")})
    assert r.returncode == 2 and "no wheel folder" in r.stderr and "nowhere" in r.stderr



def test_device_install_stops_with_one_line_when_pip_cannot_install_offline(tmp_path):
    # an empty wheel folder lacks the build's setuptools: pip fails with no index to turn to, and
    # the script stops there with a line naming the wheel folder, not a traceback further on
    # (were pip to succeed, it would only install this checkout again, as the test setup does)
    r = _install({"PYTHON": sys.executable, "WHEELS": str(tmp_path)})
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("device_install: pip could not install allnc offline")
    assert str(tmp_path) in r.stderr and "Traceback" not in r.stderr

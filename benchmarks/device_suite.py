"""The device suite: one command turns a lent GPU's minutes into results files and speed figures.

    python benchmarks/device_suite.py --out OUT [--plan first] [--methods allnc ce ...]
        [--imbalance 100] [--seeds 0] [--epochs 200] [--deadline 500] --data-root DIR
        [--data-label "CIFAR-10 (JPEG q75 copy)"] [--results results]
    python benchmarks/device_suite.py --tiny --out OUT --results DIR     # CPU, tiny generated data

``scripts/device_suite.sh`` installs the package offline and unpacks the data first. Stages,
each logged with the seconds since the start, all bounded by ``--deadline``:

1. environment: GPU, driver, torch, CUDA, cuDNN, commit, CPU cores -> ``env.json``;
   on a GPU the CUDA MPS daemon is started if it will (recorded either way);
2. data: the decoded image cache is built once, so that every run loads it;
3. smoke: one epoch of CE, AllNC and the methods with plan cells to do, compiled,
   concurrently. The engine falls back from CUDA graphs to the default compile mode to eager
   on its own; each plan run starts in the mode that worked for its method (and finds its
   compiled graphs in the inductor cache). A smoke run killed by a signal is tried again in
   the forms of ``KILLED_RETRIES`` at once and its method planned in the first that worked; a
   method that failed otherwise, or in every form, is left out of the plan;
4. speed: CE on the conventional path and on the fast path alone, then N fast runs
   concurrently -> ``speed.json`` (images/s, fast/conventional ratio, concurrency gain);
5. the plan: methods x imbalance factors x seeds, concurrently, most important first. Each
   finished run immediately gets ``RESULTS/<cell>.json`` and the output tarballs are
   rewritten; a run still going at the deadline is stopped and listed as unfinished, never
   as a result. A run killed by a signal goes again in the next retry form while time is
   left. Cells whose results file exists already are skipped. Unfinished runs that
   have a checkpoint go into ``resume.tar``, the most advanced first; a later suite given it
   (``--resume-from``) continues them where they stopped, so that runs longer than one
   session's minutes still finish. Second stages (``SECOND_STAGES``: cRT, MiSLAS, MaxNorm, GLMC
   + MaxNorm) run after the first round, each on the frozen backbone of its source cell (same
   imbalance factor and seed) finished in this suite; a source whose results file exists but
   whose run is not here is trained again for its backbone only (its results file stands; the
   new run reads no test image: ``train.eval_test=false``).

Everything to bring back is in OUT, at most 8 files, no sub-folders: ``suite.log``,
``env.json``, ``speed.json``, ``suite.json``, ``results.tar.gz`` (the new results files, as
``results/<cell>.json``), ``runs.tar.gz`` (every run directory's small files, and
``summary.md``), ``models.tar`` (the finished plan runs as run directories whose checkpoint holds
the trained model without the optimizer: ``allnc eval``, ``nc``, ``posthoc`` and ``report`` work
on them on any machine) and ``resume.tar`` (the unfinished plan runs to continue, when there
are any).
"""
from __future__ import annotations

import argparse
import functools
import io
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

from allnc.config import cell_name, load_config
from allnc.rundir import atomic_write_bytes, atomic_write_json, atomic_write_text
from allnc.engine.runtime import git_commit, versions
from allnc.grid import run_grid
from allnc.report.results import method_label, posthoc_record, result_record

FIRST_METHODS = ["allnc", "ce", "bbn", "la", "ldam_drw", "etf_dr", "bcl"]
PLANS = {
    # the first GPU plan: CIFAR-10-LT, IF 100, the standard protocol, seed 0
    "first": dict(prefix="cifar10_lt", methods=FIRST_METHODS, imbalance=[100.0], seeds=[0], epochs=200),
    # the whole CIFAR-10-LT table, the first plan's cells first (runs go imbalance factor by
    # imbalance factor, each one seed by seed): each call continues where the last stopped
    "table": dict(prefix="cifar10_lt", methods=FIRST_METHODS, imbalance=[100.0, 50.0, 10.0], seeds=[0, 1, 2],
                  epochs=200),
    # AllNC's ablations (docs/method.md) beside AllNC, IF 100
    "ablations": dict(prefix="cifar10_lt", methods=["allnc", "gbbn_only", "allnc_no_hycon", "allnc_no_p2p",
                                                    "allnc_no_centre", "ce_hycon", "ce_p2p"], imbalance=[100.0],
                      seeds=[0], epochs=200),
    # the first plan's methods with the strong preset (AutoAugment + Cutout), IF 100
    "strong": dict(prefix="cifar10_lt", methods=[f"{m}_strong" for m in FIRST_METHODS], imbalance=[100.0], seeds=[0],
                   epochs=200),
}
# second stages: a method trained on the frozen backbone of a source method's run of the same
# imbalance factor and seed (init_from), run when that source has finished in the suite
SECOND_STAGES = {"crt": "ce", "mislas": "ce_mixup", "maxnorm": "ce", "glmc_maxnorm": "glmc"}
PLANS["stages"] = dict(  # the two-stage baselines and GLMC + MaxNorm beside their sources, IF 100
    prefix="cifar10_lt", methods=["ce", "crt", "ce_mixup", "mislas", "glmc", "glmc_maxnorm"], imbalance=[100.0],
    seeds=[0, 1, 2], epochs=200)
# a smoke run killed by a signal (a crash in generated or compiled code, which no fallback in
# the process can catch: fixed ETF + DR on the H200, 2026-11-29, exit -11) is tried again in
# these forms at once; the method's plan runs take the first form that worked
KILLED_RETRIES = (("train.compile_persistent_reductions=false",), ("train.compile=off",))
SMALL_FILES = {"config.yaml", "metrics.json", "metrics.jsonl", "log.txt", "nc.json", "compile_error.txt"}
RESUME_FILES = ("checkpoint.pt", "config.yaml", "metrics.jsonl", "log.txt")  # what --resume needs, and the history
MODEL_FILES = ("config.yaml", "metrics.json", "metrics.jsonl", "log.txt", "nc.json")  # beside a finished run's model
SLIM = "model_checkpoint.pt"  # a finished run's checkpoint without the optimizer, written beside it
PLAN_CKPT_EVERY = 5  # a plan run stopped at the deadline loses at most this many epochs
TINY = ["model.width=4", "train.batch_size=16", "nc.batch_size=64", "data.num_workers=0", "train.eval_every=1"]


class Suite:
    def __init__(self, args):
        self.args = args
        self.t0 = time.monotonic()
        self.deadline = self.t0 + float(args.deadline)
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(args.work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.results = Path(args.results)
        self.results.mkdir(parents=True, exist_ok=True)
        self.new_results: list[Path] = []
        self.finished: list[Path] = []  # run directories of the plan runs finished here, in order
        self.models_packed: list[str] = []
        self.logf = open(self.out / "suite.log", "a")
        self.summary: dict = {"stages": {}}
        self.device = args.device
        self.on_gpu = args.device.startswith("cuda")
        self.compile_mode = args.compile_mode
        self.plan_extra: list[str] = []  # set by the smoke when the fast path fails here
        self.method_modes: dict[str, str] = {}  # compile mode per method, from the smoke
        self.method_backends: dict[str, str] = {}  # and backend (inductor, or cudagraphs after its failure)
        self.method_persistent: dict[str, bool] = {}  # and inductor's persistent reductions
        self.method_extra: dict[str, list[str]] = {}  # a killed smoke run's retry form that worked
        self.compile_persistent = True
        self.compile_backend = "inductor"
        self.broken: dict[str, str] = {}  # methods whose smoke run failed: not in the plan
        self.resumed: dict[str, int] = {}  # plan cells continued from --resume-from: their epoch then
        self.backbone_only: set[str] = set()  # plan cells trained again for their second stages only
        self._compile_thread: threading.Thread | None = None  # the environment stage's compile check (GPU)
        self._compile_check: dict = {}

    # ------------------------------------------------------------------ helpers
    def log(self, msg: str) -> None:
        line = f"[{time.monotonic() - self.t0:6.1f}s] {msg}"
        print(line, flush=True)
        self.logf.write(line + "\n")
        self.logf.flush()

    def _grid_log(self, msg: str) -> None:
        if not msg.startswith("| run"):  # the grid's own summary table: the suite writes its own
            self.log(f"  {msg}")

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def common(self, imbalance: bool = True) -> list[str]:
        """Overrides of every run; the smoke and speed runs use the plan's first imbalance factor."""
        o = [f"device={self.device}", "train.progress=false", f"data.root={self.args.data_root}"]
        if imbalance:
            o.append(f"data.imbalance_factor={self.args.imbalance[0]:g}")
        if self.args.cache_dir:
            o.append(f"data.cache_dir={self.args.cache_dir}")
        if self.args.tiny:
            o += TINY
        return o

    def compile_overrides(self, method: str | None = None) -> list[str]:
        """The compile mode and backend a run starts in: what the smoke found working for its
        method (the CE smoke's for the rest, inductor before any smoke)."""
        mode = self.method_modes.get(method, self.compile_mode)
        # inductor on the CPU would need a C++ toolchain: capture only
        backend = self.method_backends.get(method, self.compile_backend) if self.on_gpu else "aot_eager"
        persistent = self.method_persistent.get(method, self.compile_persistent)
        return [f"train.compile_mode={mode}", f"train.compile_backend={backend}",
                f"train.compile_persistent_reductions={str(persistent).lower()}"]

    def grid(self, name: str, runs: list[dict], conc: int, until: float, extra: list[str], on_done=None):
        spec = {"runs": runs, "max_concurrent": conc, "extra_overrides": extra}
        res = run_grid(spec, out=self.work / name, log=self._grid_log, deadline=until, on_done=on_done)
        self.pack()
        return res

    def pack(self) -> None:
        """Rewrite the output tarballs (atomically): what finished so far is never lost."""
        def tar_bytes(files: list[tuple[Path, str]]) -> bytes:
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w:gz") as tf:
                for path, arc in files:
                    if path.is_file():
                        tf.add(path, arcname=arc)
            return buf.getvalue()

        runs = [(p, str(p.relative_to(self.work))) for p in sorted(self.work.rglob("*"))
                if p.is_file() and p.name in SMALL_FILES]
        summary = self.work / "summary.md"  # read as it is rewritten here, in runs.tar.gz
        atomic_write_text(summary, self.render_summary())
        data = tar_bytes([(summary, "summary.md"), *runs])
        atomic_write_bytes(self.out / "runs.tar.gz", lambda f: f.write(data))
        res = tar_bytes([(p, f"results/{p.name}") for p in self.new_results])
        atomic_write_bytes(self.out / "results.tar.gz", lambda f: f.write(res))
        self.pack_models()

    def pack_models(self) -> None:
        """``OUT/models.tar``: the finished plan runs, in the order they finished, as run
        directories (``<cell>/checkpoint.pt`` without the optimizer, config, metrics, log), as
        many as fit in ``--models-cap-mib``; the trained weights come back, not only their
        figures."""
        dirs = [d for d in self.finished if (d / SLIM).is_file()]
        chosen, total = [], 0
        for d in dirs:
            size = sum((d / f).stat().st_size for f in (SLIM, *MODEL_FILES) if (d / f).is_file())
            if total + size <= self.args.models_cap_mib * 2**20:
                chosen.append(d)
                total += size
        self.models_packed = [d.name for d in chosen]
        target = self.out / "models.tar"
        if not chosen:
            target.unlink(missing_ok=True)
            return
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tf:
            for d in chosen:
                tf.add(d / SLIM, arcname=f"{d.name}/checkpoint.pt")
                for f in MODEL_FILES:
                    if (d / f).is_file():
                        tf.add(d / f, arcname=f"{d.name}/{f}")
        data = buf.getvalue()
        atomic_write_bytes(target, lambda f: f.write(data))

    # ------------------------------------------------------------------ 1. environment
    def environment(self) -> None:
        import torch

        env = {"command": " ".join(sys.argv), "git_commit": git_commit(), "versions": versions(),
               "host": platform.node(), "kernel": platform.release(), "cpu_cores": os.cpu_count(),
               "torch_cuda": torch.version.cuda, "device": self.device, "tiny": bool(self.args.tiny)}
        if self.on_gpu:
            # this process never touches CUDA itself: every CUDA client is a child started
            # after the MPS daemon, which is what MPS needs
            env["nvidia_smi"] = _run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                                      "--format=csv,noheader"])
            env["mps"] = self.start_mps() if self.args.mps else {"started": False, "why": "--no-mps"}
            probe = _gpu_probe()
            if "error" in probe and env["mps"]["started"]:
                self.stop_mps()
                env["mps"] = {"started": False, "why": f"a CUDA client failed under MPS: {probe['error']}"}
                probe = _gpu_probe()
            if "error" in probe:
                atomic_write_json(self.out / "env.json", env | {"gpu_probe": probe})
                raise SystemExit(f"device_suite: no usable GPU ({probe['error']}); use --device cpu")
            env.update(probe)
            # a few seconds, beside the data stage, that name the cause if the runs' compilation
            # fails (their own tracebacks come back too, as compile_error.txt in runs.tar.gz)
            self._compile_thread = threading.Thread(
                target=lambda: self._compile_check.update(compile_check("cuda", ["inductor", "cudagraphs"])), daemon=True)
            self._compile_thread.start()
        else:
            env["gpu"] = None
            env["mps"] = {"started": False, "why": "no GPU"}
        atomic_write_json(self.out / "env.json", env)
        self.summary["env"] = env
        self.log(f"environment: {env.get('gpu') or 'CPU'}; torch {env['versions']['torch']} (CUDA {env['torch_cuda']}); "
                 f"commit {env['git_commit']}; MPS {'on' if env['mps']['started'] else 'off'} ({env['mps'].get('why', '')})")

    def finish_compile_check(self) -> None:
        """Wait for the compile check (a minute at most: it must not eat the plan's time) and record it."""
        if self._compile_thread is None:
            return
        self._compile_thread.join(timeout=max(1.0, min(60.0, self.left() - 300)))
        checks = dict(self._compile_check)
        env = self.summary["env"]
        env["compile_check"] = checks or {"unfinished": True}
        atomic_write_json(self.out / "env.json", env)
        said = [f"{b} {'ok' if c.get('ok') else 'FAILED: ' + _last_line(c.get('error', ''))} ({c.get('s', '-')} s)"
                for b, c in checks.items()]
        self.log("compile check: " + ("; ".join(said) or "not finished"))
        self.compile_backend = backend_after_check(checks, self.compile_backend)
        if self.compile_backend != "inductor":
            self.log(f"compile check: inductor fails here; the smoke starts from the {self.compile_backend} backend "
                     "(no run spends its probe on inductor's failing modes)")

    def start_mps(self) -> dict:
        """Start the CUDA MPS control daemon (its clients are the processes started after it)."""
        if shutil.which("nvidia-cuda-mps-control") is None:
            return {"started": False, "why": "nvidia-cuda-mps-control not found"}
        pipe, logd = self.work / "mps-pipe", self.work / "mps-log"
        pipe.mkdir(exist_ok=True)
        logd.mkdir(exist_ok=True)
        os.environ["CUDA_MPS_PIPE_DIRECTORY"] = str(pipe)
        os.environ["CUDA_MPS_LOG_DIRECTORY"] = str(logd)
        try:
            r = subprocess.run(["nvidia-cuda-mps-control", "-d"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError) as e:
            self._drop_mps_env()
            return {"started": False, "why": f"daemon did not start: {e}"}
        if r.returncode != 0:
            self._drop_mps_env()
            return {"started": False, "why": f"daemon did not start: {(r.stderr or r.stdout).strip()[:200]}"}
        return {"started": True, "why": "daemon started; a CUDA client ran under it"}

    def stop_mps(self) -> None:
        """Ask the MPS daemon to quit. A daemon that does not answer is left running and said in
        the log: on an H200 (2026-11-29) the quit timed out after 30 s, and the exception then
        cost the suite its suite.json."""
        try:
            subprocess.run(["nvidia-cuda-mps-control"], input="quit\n", text=True, capture_output=True, timeout=30)
        except (OSError, subprocess.SubprocessError) as e:
            self.log(f"MPS daemon did not quit ({type(e).__name__}: {e}); left running")
        self._drop_mps_env()

    @staticmethod
    def _drop_mps_env() -> None:
        os.environ.pop("CUDA_MPS_PIPE_DIRECTORY", None)
        os.environ.pop("CUDA_MPS_LOG_DIRECTORY", None)

    # ------------------------------------------------------------------ 2. data
    def data(self) -> None:
        t = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "allnc", "data", "--config", f"{self.args.prefix}_ce", *self.common()],
                           capture_output=True, text=True, timeout=max(30, int(self.left())))
        if r.returncode != 0:
            raise SystemExit(f"device_suite: the data do not load: {r.stderr.strip().splitlines()[-1:]}")
        self.log(f"data ({time.monotonic() - t:.0f} s): " + " | ".join(r.stdout.strip().splitlines()[:3]))

    # ------------------------------------------------------------------ 3. smoke
    def smoke(self) -> None:
        rows = self._smoke("smoke", [])
        retries = self.retry_killed(rows)
        retried_ok = any(t.get("ok") for forms in retries.values() for t in forms.values())
        if not any(r.get("ok") for r in rows.values()) and not retried_ok:
            # compilation falls back inside the engine, so this is the fast data path or a
            # method failing on this device: try the conventional path, and let the plan use it
            self.log("smoke: every run failed; trying again with data.pipeline=conventional")
            alt = ["data.pipeline=conventional", f"data.num_workers={max(1, self.args.workers // 4)}"]
            rows2 = self._smoke("smoke_conventional", alt)
            if any(r.get("ok") for r in rows2.values()):
                self.plan_extra = alt + ["train.compile=on"]
            rows.update(rows2)
        self.summary["stages"]["smoke"] = {"runs": rows, "retries": retries, "compile_modes": self.method_modes,
                                           "compile_backends": self.method_backends,
                                           "persistent_reductions": self.method_persistent,
                                           "method_extra": self.method_extra, "plan_extra": self.plan_extra}

    def smoke_methods(self) -> list[str]:
        """The smoke's methods: those given, else CE, AllNC and every method with a plan cell
        still to do (a method whose cells all have results files needs no warm cache)."""
        if self.args.smoke_methods:
            return self.args.smoke_methods
        todo = {self.method_of(c[1]) for c in self.plan_cells() if not self.has_result(c[0])}
        todo -= set(SECOND_STAGES)  # they need a source run; a smoke run has none
        return list(dict.fromkeys(["ce", "allnc", *(m for m in self.args.methods if m in todo)]))

    def _smoke(self, name: str, alt: list[str]) -> dict:
        runs = [{"config": f"{self.args.prefix}_{m}", "name": f"{name}_{m}"} for m in self.smoke_methods()]
        extra = self.common() + ["train.epochs=1", "train.compile=on", *self.compile_overrides(), *alt]
        until = time.monotonic() + min(self.args.smoke_s, max(self.left() - 60, 10))
        res = self.grid(name, runs, len(runs), until, extra)
        rows = {}
        for s in res.runs:
            m = _read_json(s.run_dir / "metrics.json")
            if m is None:
                rows[s.name] = {"ok": False, "why": res.reasons.get(s.name, "stopped at its time limit")}
                continue
            hist = _read_jsonl(s.run_dir / "metrics.jsonl")
            rows[s.name] = {"ok": True, "compile": m.get("compile"), "epoch_s": hist[0]["time_s"] if hist else None,
                            "wall_s": m.get("wall_time_s"), "top1": m.get("top1")}
        fell_back = [r["compile"]["fallback"] for r in rows.values() if r.get("ok") and r["compile"].get("fallback")]
        if fell_back:
            self.log("smoke: compilation fell back: " + " | ".join(fell_back))
        # each method's plan run starts from the mode that worked for it here (its compiled
        # graphs are then in the inductor cache); eager after all -> default, and the engine
        # falls back again if it must
        for m in self.smoke_methods():
            r = rows.get(f"{name}_{m}", {})
            if r.get("ok"):
                self.take_compile(m, r["compile"])
            elif str(r.get("why", "")).startswith("exit status"):
                self.broken[m] = r["why"]
        ce = rows.get(f"{name}_ce", {})
        if ce.get("ok"):
            self.compile_mode = self.method_modes["ce"]
            self.compile_backend = self.method_backends["ce"]
            self.compile_persistent = self.method_persistent["ce"]
        for n, r in rows.items():
            self.log(f"smoke {n}: " + (f"ok, compile {r['compile']}, 1 epoch {r['epoch_s']} s, wall {r['wall_s']} s"
                                       if r.get("ok") else f"FAILED ({r['why']})"))
        return rows

    def take_compile(self, m: str, info: dict) -> None:
        """The plan runs of method ``m`` start in the compile settings its smoke run ended with."""
        used = info.get("used")
        self.method_modes[m] = info["mode"] if used else "default"
        self.method_backends[m] = info.get("backend", "inductor") if used else "inductor"
        self.method_persistent[m] = bool(info.get("persistent_reductions", True)) if used else True

    def retry_killed(self, rows: dict) -> dict:
        """Smoke runs killed by a signal get one more try in each of ``KILLED_RETRIES``, all at
        once; a method whose retry worked is planned in the first form that did (its
        ``method_extra``), the others stay out of the plan."""
        killed = [m for m in self.smoke_methods() if signal_death(rows.get(f"smoke_{m}", {}).get("why"))]
        if not killed:
            return {}
        if self.left() < 150:
            self.log(f"smoke: no time to try {', '.join(killed)} again ({self.left():.0f} s left)")
            return {}
        forms = {f"retry_{m}_{i}": (m, form) for m in killed for i, form in enumerate(KILLED_RETRIES)}
        self.log("smoke: " + ", ".join(f"{m} died ({self.broken[m]})" for m in killed) + "; trying again with "
                 + " | ".join(" ".join(f) for f in KILLED_RETRIES) + ", at once")
        runs = [{"config": f"{self.args.prefix}_{m}", "name": name,
                 "overrides": ["train.compile=on", *self.compile_overrides(m), *form]} for name, (m, form) in forms.items()]
        extra = self.common() + ["train.epochs=1"]
        res = self.grid("smoke_retry", runs, len(runs), time.monotonic() + min(self.args.smoke_s, self.left() - 60), extra)
        out: dict = {}
        for s in res.runs:
            m, form = forms[s.name]
            info = (_read_json(s.run_dir / "metrics.json") or {}).get("compile")
            out.setdefault(m, {})[" ".join(form)] = (
                {"ok": True, "compile": info} if info is not None
                else {"ok": False, "why": res.reasons.get(s.name, "stopped at its time limit")})
        for m in killed:
            won = next((f for f in KILLED_RETRIES if out.get(m, {}).get(" ".join(f), {}).get("ok")), None)
            if won is None:
                self.broken[m] += "; and in every retry"
                self.log(f"smoke: {m} failed again in every form: {out.get(m)}")
                continue
            del self.broken[m]
            self.take_compile(m, out[m][" ".join(won)]["compile"])
            self.method_extra[m] = list(won)
            self.log(f"smoke: {m} is planned with {' '.join(won)} (compile {out[m][' '.join(won)]['compile']})")
        return out

    # ------------------------------------------------------------------ 4. speed
    def speed(self) -> None:
        a = self.args
        speed: dict = {"device": self.summary["env"].get("gpu") or "cpu", "mps": self.summary["env"]["mps"]["started"],
                       "compile_mode": self.compile_mode, "config": f"{a.prefix}_ce", "measurements": []}
        base = self.common() + ["train.eval_every=1000", "train.ckpt_every=1000", *self.compile_overrides()]

        def one(name, runs, extra, budget):
            if self.left() - self.args.plan_reserve_s < budget * 0.5:
                self.log(f"speed {name}: skipped (not enough time before the plan)")
                return None
            res = self.grid(f"speed_{name}", runs, len(runs), time.monotonic() + budget, base + extra)
            hists = [_read_jsonl(s.run_dir / "metrics.jsonl") for s in res.runs if (s.run_dir / "metrics.json").is_file()]
            if len(hists) != len(runs):
                self.log(f"speed {name}: {len(runs) - len(hists)} of {len(runs)} runs did not finish in {budget:.0f} s")
                return None
            m = throughput(hists, steps_images=_images_per_epoch(res.runs[0].run_dir))
            m.update(name=name, runs=len(runs))
            speed["measurements"].append(m)
            self.log(f"speed {name}: {m['images_per_s']:.0f} images/s over {m['window_s']:.1f} s "
                     f"(steady epoch {m['epoch_s_mean']:.3f} s per run)")
            return m

        ce = f"{a.prefix}_ce"
        conv = one("conventional", [{"config": ce, "name": "conv"}],
                   ["data.pipeline=conventional", "train.compile=off", f"data.num_workers={a.workers}",
                    f"train.epochs={a.speed_epochs_conv}"], a.speed_budget_s)
        fast1 = one("fast_x1", [{"config": ce, "name": "fast"}], ["data.pipeline=fast", f"train.epochs={a.speed_epochs}"],
                    a.speed_budget_s)
        n = a.concurrency
        fastn = one(f"fast_x{n}", [{"config": ce, "name": f"fast{i}", "overrides": [f"seed={i}"]} for i in range(n)],
                    ["data.pipeline=fast", f"train.epochs={a.speed_epochs}"], a.speed_budget_s * 1.5)
        derived = {}
        if conv and fast1:
            derived["fast_over_conventional_ce"] = round(fast1["images_per_s"] / conv["images_per_s"], 2)
        if fast1 and fastn:
            derived[f"throughput_{n}_over_1"] = round(fastn["images_per_s"] / fast1["images_per_s"], 2)
        if fast1:
            derived["ce_epochs_estimate_s"] = round(fast1["epoch_s_mean"] * a.epochs, 1)
        speed["derived"] = derived
        speed["git_commit"] = git_commit()
        self.speed_figures = speed
        atomic_write_json(self.out / "speed.json", speed)
        self.summary["stages"]["speed"] = speed
        self.log(f"speed: {derived}")

    # ------------------------------------------------------------------ 5. the plan
    def plan_cells(self) -> list[tuple[str, str, float, int]]:
        """(cell, config, imbalance factor, seed) of every run of the plan, in its order:
        imbalance factor by imbalance factor, each one seed by seed, each seed with every method
        (the headline IF 100 table gets its three seeds, mean and spread, before the next)."""
        a = self.args
        return [(cell_name(f"{a.prefix}_{m}", f, self.cell_epochs(m), s), f"{a.prefix}_{m}", f, s)
                for f in a.imbalance for s in a.seeds for m in a.methods]

    def cell_epochs(self, method: str) -> int:
        """The plan's epochs; a second stage keeps its own short schedule (at most the plan's)."""
        if method not in SECOND_STAGES:
            return self.args.epochs
        return min(_config_epochs(f"{self.args.prefix}_{method}"), self.args.epochs)

    def source_cell(self, cell: tuple) -> tuple[str, str, float, int]:
        """The plan cell whose run a second stage's cell starts from (same imbalance factor and seed)."""
        src = SECOND_STAGES[self.method_of(cell[1])]
        return (cell_name(f"{self.args.prefix}_{src}", cell[2], self.args.epochs, cell[3]), f"{self.args.prefix}_{src}",
                cell[2], cell[3])

    def finished_here(self, cell: str) -> bool:
        """A run of ``cell`` finished in this suite's work folder (its model is here)."""
        d = self.work / "plan" / cell
        return (d / "metrics.json").is_file() and (d / "checkpoint.pt").is_file()

    def method_of(self, config: str) -> str:
        """The method part of a plan config name: ``cifar10_lt_etf_dr`` -> ``etf_dr``."""
        return config[len(self.args.prefix) + 1:]

    def has_result(self, cell: str) -> bool:
        return (self.results / f"{cell}.json").is_file()

    def smoke_skipped(self) -> str | None:
        """Why the smoke does not run, or None: it only warms the plan's compiled graphs (each
        plan run still falls back from a failing compile mode on its own)."""
        if self.args.no_smoke:
            return "--no-smoke"
        if all(self.has_result(c[0]) for c in self.plan_cells()):
            return "every plan cell has its results file"
        return None

    def plan(self) -> None:
        a = self.args
        left_out = [m for m in a.methods if m in self.broken and not self.plan_extra]
        for m in left_out:
            self.log(f"plan: {m} left out: its smoke run failed ({self.broken[m]}); see runs.tar.gz smoke/*/log.txt")
        cells = [c for c in self.plan_cells() if c[1] not in {f"{a.prefix}_{m}" for m in left_out}]
        todo = [c for c in cells if not self.has_result(c[0])]
        skipped = [c[0] for c in cells if c not in todo]
        for name in skipped:
            self.log(f"plan: {name} has a results file already; skipped")
        # second stages wait for their sources; a source with a results file but no run here is
        # trained again for its backbone only (its results file is not replaced)
        second = [c for c in todo if self.method_of(c[1]) in SECOND_STAGES]
        todo = [c for c in todo if c not in second]
        for c in second:
            src = self.source_cell(c)
            if src in todo or self.finished_here(src[0]):
                continue
            todo.append(src)
            if self.has_result(src[0]):
                self.backbone_only.add(src[0])
                self.log(f"plan: {src[0]} has its results file but no run here; trained again as the backbone of "
                         f"{c[0]} (its results file stands; this run reads no test image)")
        if not todo and not second:
            self.summary["stages"]["plan"] = {"skipped": skipped, "done": [], "unfinished": [], "not_started": [],
                                              "failed": []}
            return
        if a.resume_from:
            self.unpack_resume(Path(a.resume_from), {c[0] for c in todo})
        # the most advanced resumed runs first, then the plan's order
        todo.sort(key=lambda c: -self.resumed.get(c[0], -1))
        conc = self.plan_concurrency(max(len(todo), len(second), 1))
        runs, extra = self.plan_runs(todo)
        self.log(f"plan: {len(todo)} runs (then {len(second)} second stages), {conc} at once, compile modes "
                 f"{self.method_modes or self.compile_mode}, {self.left() - a.pack_reserve_s:.0f} s left for them")

        stage_of = {c[0]: self.source_cell(c)[0] for c in second}

        def done(spec, secs):
            if spec.name in self.backbone_only:
                self.log(f"plan: {spec.name} finished as a backbone for its second stages")
                return
            suite = {"plan": a.plan, "concurrent_runs": conc, "mps": self.summary["env"]["mps"]["started"]}
            if spec.name in self.resumed:  # begun in an earlier suite (see its suite.log), continued here
                suite["resumed_from_epoch"] = self.resumed[spec.name]
            extra = {"data_label": a.data_label, "process_wall_s": round(secs, 1), "suite": suite}
            if spec.name in stage_of:  # the run its backbone came from (its table: result_record)
                extra["source_cell"] = stage_of[spec.name]
            rec = result_record(spec.run_dir, spec.name, extra)
            path = self.results / f"{spec.name}.json"
            atomic_write_json(path, rec)
            self.new_results.append(path)
            g = rec["groups"]
            self.log(f"RESULT {spec.name}: top-1 {rec['top1']:.2f} many {_f(g['many'])} medium {_f(g['medium'])} "
                     f"few {_f(g['few'])}; ECE {_f(rec.get('ece'))}; head-ward errors {_headward(rec)}; "
                     f"wall {rec['wall_time_s']:.0f} s")
            corrections = posthoc_corrections(self.method_of(rec["config_name"]), rec.get("config") or {})
            if corrections:
                self.posthoc_rows(spec, secs, corrections)
            try:
                write_slim(spec.run_dir)
                self.finished.append(spec.run_dir)
            except Exception as e:  # noqa: BLE001 - the model not coming back never costs the result
                self.log(f"models.tar: {spec.name} left out ({type(e).__name__}: {e})")
            self.pack()

        res = self.grid("plan", runs, conc, self.deadline - a.pack_reserve_s, extra, on_done=done) if todo else None
        retries = self.retry_killed_plan(res, todo, conc, done) if todo else []
        rounds = [r for r in (res, *(r for r, _ in retries)) if r is not None]
        ready = [c for c in second if self.finished_here(self.source_cell(c)[0])]
        for c in second:
            if c not in ready:
                self.log(f"plan: {c[0]} not run: its source {self.source_cell(c)[0]} did not finish here")
        if ready and self.left() - a.pack_reserve_s > 30:
            runs, extra = self.plan_runs(ready)
            self.log(f"plan: second stages {', '.join(c[0] for c in ready)}")
            rounds.append(self.grid("plan", runs, min(conc, len(runs)), self.deadline - a.pack_reserve_s, extra,
                                    on_done=done))
        done_names = [s.name for r in rounds for s in r.done]
        failed = {s.name: r.reasons.get(s.name) for r in rounds for s in r.failed}  # a later round's word last
        failed = {n: why for n, why in failed.items() if n not in done_names}
        unfinished = {s.name: s for r in rounds for s in r.unfinished if s.name not in done_names}
        not_started = {s.name: s for r in rounds for s in r.not_started
                       if s.name not in done_names and s.name not in unfinished}
        # a run resumed from --resume-from that never started here (too few slots) goes on too
        packed = self.pack_resume([s.run_dir for s in (*unfinished.values(), *not_started.values())])
        self.summary["stages"]["plan"] = {
            "skipped": skipped, "concurrent": conc, "done": done_names, "failed": failed,
            "unfinished": {n: _last_epoch(s.run_dir) for n, s in unfinished.items()},
            "not_started": list(not_started), "resumed": self.resumed, "resume_tar": packed,
            "retried": [forms for _, forms in retries],
            "models_tar": self.models_packed}

    def retry_killed_plan(self, res, todo: list[tuple], conc: int, done) -> list:
        """Plan runs killed by a signal go again, from their last checkpoint (or afresh), in the
        next form of ``KILLED_RETRIES`` that their method has not had, while time is left: a
        crash the smoke did not show (or one late in training) costs the run a restart, not
        its place in the table. Returns each retry round's (grid result, {cell: form})."""
        a, rounds = self.args, []
        cells = {c[0]: c for c in todo}
        while True:
            killed = [s.name for s in res.failed if signal_death(res.reasons.get(s.name)) and s.name in cells]
            method = {n: self.method_of(cells[n][1]) for n in killed}
            for m in dict.fromkeys(method.values()):  # each method one step down, however many cells died
                tried = tuple(self.method_extra.get(m, ()))
                nxt = KILLED_RETRIES.index(tried) + 1 if tried in KILLED_RETRIES else 0
                self.method_extra[m] = list(KILLED_RETRIES[nxt]) if nxt < len(KILLED_RETRIES) else None
            again, forms = [], {}
            for n in killed:
                if self.method_extra[method[n]] is None:
                    self.log(f"plan: {n} died ({res.reasons.get(n)}) in every form; not tried again")
                    continue
                again.append(cells[n])
                forms[n] = " ".join(self.method_extra[method[n]])
            self.method_extra = {m: f for m, f in self.method_extra.items() if f is not None}
            if not again:
                return rounds
            if self.left() - a.pack_reserve_s < 60:
                self.log(f"plan: no time to try {', '.join(forms)} again")
                return rounds
            self.log("plan: " + "; ".join(f"{n} died ({res.reasons.get(n)}), again with {f}" for n, f in forms.items()))
            runs, extra = self.plan_runs(again)
            res = self.grid("plan", runs, min(conc, len(runs)), self.deadline - a.pack_reserve_s, extra, on_done=done)
            rounds.append((res, forms))

    def plan_runs(self, todo: list[tuple]) -> tuple[list[dict], list[str]]:
        """The grid's runs for the plan cells ``todo`` and the overrides they share."""
        a = self.args
        # the method's own settings last: a killed smoke run's retry form (train.compile=off, say)
        # wins over the conventional path's train.compile=on
        def own(cfg: str) -> list[str]:
            m = self.method_of(cfg)
            return [*self.compile_overrides(m), *self.method_extra.get(m, [])]

        def stage(c: tuple) -> list[str]:
            m = self.method_of(c[1])
            if m in SECOND_STAGES:
                return [f"init_from={(self.work / 'plan' / self.source_cell(c)[0]).resolve()}"]
            if c[0] in self.backbone_only:  # its figures are on record already: the test set stays unread
                return ["train.eval_test=false"]
            return []

        runs = [{"config": c[1], "name": c[0], "overrides": [
            f"data.imbalance_factor={c[2]:g}", f"train.epochs={self.cell_epochs(self.method_of(c[1]))}", f"seed={c[3]}",
            *self.plan_extra, *own(c[1]), *stage(c)]} for c in todo]
        extra = self.common(imbalance=False) + [f"nc.every={a.epochs}", f"train.ckpt_every={PLAN_CKPT_EVERY}"]
        return runs, extra

    def unpack_resume(self, tar: Path, cells: set[str]) -> None:
        """Put the run directories of an earlier suite's ``resume.tar`` where the plan's runs go,
        for the cells still to do; the grid then resumes them from their checkpoints."""
        if not tar.is_file():
            self.log(f"plan: no {tar}; nothing to resume")
            return
        dest = self.work / "plan"
        with tarfile.open(tar) as tf:
            # only <cell>/<one of RESUME_FILES> for a cell still to do; nothing else is written
            members = {m: Path(m.name).parts for m in tf.getmembers() if m.isfile()}
            members = {m: p for m, p in members.items() if len(p) == 2 and p[0] in cells and p[1] in RESUME_FILES}
            for m, (cell, name) in members.items():
                run_dir = dest / cell
                if (run_dir / "metrics.json").is_file():
                    continue  # finished here already
                run_dir.mkdir(parents=True, exist_ok=True)
                data = tf.extractfile(m).read()
                atomic_write_bytes(run_dir / name, lambda f: f.write(data))
        for cell in sorted({cell for cell, _ in members.values()}):
            if (dest / cell / "checkpoint.pt").is_file() and not (dest / cell / "metrics.json").is_file():
                self.resumed[cell] = _ckpt_epoch(dest / cell)
        self.log(f"plan: resuming {len(self.resumed)} runs from {tar}: "
                 + (", ".join(f"{c} at epoch {e}" for c, e in self.resumed.items()) or "none of its runs is still to do"))

    def pack_resume(self, run_dirs: list[Path]) -> list[str]:
        """``OUT/resume.tar``: the unfinished runs that have a checkpoint, the most advanced
        first, as many as fit in ``--resume-cap-mib`` (a file that comes back from the device
        may hold 16 MiB)."""
        epochs = resume_candidates(run_dirs)
        chosen = select_resume(epochs, int(self.args.resume_cap_mib * 2**20))
        target = self.out / "resume.tar"
        if not chosen:
            target.unlink(missing_ok=True)
            return []
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tf:  # checkpoints are floats: gzip would gain ~10%
            for d in chosen:
                for f in RESUME_FILES:
                    if (d / f).is_file():
                        tf.add(d / f, arcname=f"{d.name}/{f}")
        data = buf.getvalue()
        atomic_write_bytes(target, lambda f: f.write(data))
        left = [d.name for d in epochs if d not in chosen]
        self.log(f"plan: resume.tar holds {len(chosen)} unfinished runs ({len(data) / 2**20:.1f} MiB): "
                 + ", ".join(f"{d.name} at epoch {epochs[d]}" for d in chosen)
                 + (f"; left out for its size: {', '.join(left)}" if left else "")
                 + "; continue them with --resume-from")
        return [d.name for d in chosen]

    def posthoc_rows(self, spec, secs, corrections) -> None:
        """Post-hoc corrections of a finished run (``posthoc_corrections``), each one more row of
        the table (its parameter chosen on a validation split of left-out training images, the
        test set read once)."""
        for m in corrections:
            try:
                cell, rec, r = posthoc_record(spec.run_dir, spec.name, m, device="cuda" if self.on_gpu else "cpu", extra={
                    "data_label": self.args.data_label, "process_wall_s": round(secs, 1), "suite": {"plan": self.args.plan}})
            except Exception as e:  # a failed correction never costs the run's own result
                self.log(f"posthoc {m} of {spec.name} failed: {type(e).__name__}: {e}")
                continue
            path = self.results / f"{cell}.json"
            atomic_write_json(path, rec)
            self.new_results.append(path)
            self.log(f"RESULT {cell}: {r.get('parameter', 'tau')} {r['tau']}, top-1 {r['test']['top1']:.2f}")

    def plan_concurrency(self, n: int) -> int:
        """``--concurrency`` runs at once (at most) if concurrent runs scale; else a few at a
        time, most important first. Never more than ``--concurrency``: a long plan (the table's
        63 cells) started all at once would share the GPU so thinly that none finished."""
        if self.args.plan_concurrency:
            return min(n, self.args.plan_concurrency)
        d = getattr(self, "speed_figures", {}).get("derived", {})
        gain = d.get(f"throughput_{self.args.concurrency}_over_1")
        cap = min(n, self.args.concurrency)
        if not self.on_gpu:
            return n
        if gain is None:  # not measured: all at once only where MPS lets the runs share the GPU
            return cap if self.summary["env"]["mps"]["started"] else min(n, 3)
        if gain >= 0.6 * self.args.concurrency:
            return cap
        return min(cap, max(2, int(math.ceil(gain)) + 1))

    # ------------------------------------------------------------------ summary
    def render_summary(self) -> str:
        env = self.summary.get("env", {})
        lines = [f"# Device suite ({'tiny, ' if self.args.tiny else ''}{env.get('gpu') or 'CPU'})", "",
                 f"commit {env.get('git_commit')}, torch {env.get('versions', {}).get('torch')}, "
                 f"elapsed {time.monotonic() - self.t0:.0f} s", ""]
        sp = self.summary["stages"].get("speed")
        if sp:
            lines += ["## Speed", "", "| measurement | runs | images/s (all runs) | steady epoch s per run |",
                      "|---|---|---|---|"]
            lines += [f"| {m['name']} | {m['runs']} | {m['images_per_s']:.0f} | {m['epoch_s_mean']:.3f} |"
                      for m in sp["measurements"]]
            lines += ["", f"derived: {json.dumps(sp.get('derived', {}))}", ""]
        if self.new_results:
            lines += ["## Results (this suite)", "",
                      "| cell | method | top-1 | many | medium | few | ECE % | head-ward errors % (even) | wall s |",
                      "|---|---|---|---|---|---|---|---|---|"]
            for p in self.new_results:
                r = json.loads(p.read_text())
                g = r["groups"]
                lines.append(f"| {r['cell']} | {method_label(r['config_name'])} | {r['top1']:.2f} | {_f(g['many'])} | "
                             f"{_f(g['medium'])} | {_f(g['few'])} | {_f(r.get('ece'))} | {_headward(r)} | "
                             f"{r['wall_time_s']:.0f} |")
            lines.append("")
        pl = self.summary["stages"].get("plan")
        if pl:
            lines += ["## Plan", "", "```", json.dumps(pl, indent=1), "```", ""]
        return "\n".join(lines)

    def run(self) -> int:
        status = 0
        # many processes compile at once: a few inductor compile workers each, not one per core
        os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", str(max(1, (os.cpu_count() or 4) // 4)))
        try:
            self.environment()
            self.data()
            self.finish_compile_check()
            for stage in ("smoke", "speed", "plan"):
                if stage == "speed" and self.args.no_speed:
                    continue
                why = self.smoke_skipped() if stage == "smoke" else None
                if why:
                    self.summary["stages"]["smoke"] = {"skipped": why}
                    self.log(f"smoke: skipped ({why})")
                    continue
                t = time.monotonic()
                try:
                    getattr(self, stage)()
                except Exception as e:  # noqa: BLE001 - one stage failing must not lose the others
                    status = 1
                    self.log(f"{stage}: FAILED {type(e).__name__}: {e}")
                self.summary["stages"].setdefault(stage, {})
                self.log(f"{stage} took {time.monotonic() - t:.0f} s")
        finally:
            if self.summary.get("env", {}).get("mps", {}).get("started"):
                self.stop_mps()
            self.pack()
            atomic_write_json(self.out / "suite.json", self.summary)
            self.log(f"suite finished in {time.monotonic() - self.t0:.0f} s; output in {self.out}")
        return status


def posthoc_corrections(method: str, cfg: dict) -> tuple[str, ...]:
    """The post-hoc rows a finished plan run gets: tau-norm and logit adjustment for CE (the
    reference table's rows); the inference mix chosen on validation for a two-branch run whose
    config leaves that choice to a validation split (``inference_mix: auto``, AllNC and its
    ablations) but which had none, so that it ran with the adaptor's final mix."""
    if method.removesuffix("_strong") == "ce":
        return ("tau_norm", "logit_adjust")
    m, d = cfg.get("method") or {}, cfg.get("data") or {}
    if (m.get("name") == "gbbn" and (m.get("gbbn") or {}).get("inference_mix") == "auto"
            and not d.get("val_per_class") and not d.get("val_list")):
        return ("inference_mix",)
    return ()


@functools.lru_cache(maxsize=None)
def _config_epochs(config: str) -> int:
    """A built-in config's ``train.epochs`` (composed once: the plan asks for it cell by cell)."""
    return int(load_config(config).train.epochs)


def write_slim(run_dir: Path) -> None:
    """``run_dir/SLIM``: the final checkpoint without the optimizer's state (half its size for
    SGD with momentum), which is all that evaluating, measuring or exporting the model needs."""
    from allnc.engine.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(run_dir / "checkpoint.pt")
    ckpt.pop("optimizer", None)
    save_checkpoint(run_dir / SLIM, ckpt)


def resume_candidates(run_dirs: list[Path]) -> dict[Path, int]:
    """The run directories that have a checkpoint, with the epoch it holds (each read once)."""
    return {d: _ckpt_epoch(d) for d in run_dirs if (d / "checkpoint.pt").is_file()}


def select_resume(epochs: dict[Path, int], cap_bytes: int) -> list[Path]:
    """The run directories to carry to the next suite (``epochs``: ``resume_candidates``): the
    most advanced first, while their files fit in ``cap_bytes`` together."""
    chosen, total = [], 0
    for d in sorted(epochs, key=lambda d: -epochs[d]):
        size = sum((d / f).stat().st_size for f in RESUME_FILES if (d / f).is_file())
        if total + size <= cap_bytes:
            chosen.append(d)
            total += size
    return chosen


def signal_death(why) -> bool:
    """Whether a grid's failure reason is a process killed by a signal (``exit status -11``)."""
    return re.match(r"exit status -\d+\b", str(why or "")) is not None


def backend_after_check(checks: dict, backend: str) -> str:
    """The compile backend the smoke starts from, given the environment's compile check: the
    ``cudagraphs`` backend where inductor failed the check (each run would otherwise spend a
    minute of its probe on inductor's failing modes before reaching it); ``backend`` where the
    check passed inductor or did not finish."""
    if backend == "inductor" and "ok" in checks.get("inductor", {}) and not checks["inductor"]["ok"]:
        return "cudagraphs"
    return backend


# ---------------------------------------------------------------------- measurement
def throughput(hists: list[list[dict]], steps_images: int) -> dict:
    """Images per second of concurrent runs over the window in which all of them were
    training: from the latest first-epoch start to the earliest last-epoch end, counting the
    epochs (or the part of one) each run spent inside it."""
    spans = [[(h["t_end"] - h["time_s"], h["t_end"]) for h in hist] for hist in hists]
    lo = max(sp[0][0] for sp in spans)
    hi = min(sp[-1][1] for sp in spans)
    if hi <= lo:  # the runs did not overlap: each run's own rate, summed
        rate = sum(len(sp) * steps_images / sum(b - a for a, b in sp) for sp in spans)
        return {"images_per_s": rate, "window_s": 0.0, "overlap": False,
                "epoch_s_mean": sum(sum(b - a for a, b in sp) / len(sp) for sp in spans) / len(spans)}
    imgs = 0.0
    for sp in spans:
        for a, b in sp:
            inside = max(0.0, min(b, hi) - max(a, lo))
            imgs += steps_images * inside / (b - a)
    steady = [sum(b - a for a, b in sp[1:]) / max(len(sp) - 1, 1) if len(sp) > 1 else sp[0][1] - sp[0][0] for sp in spans]
    return {"images_per_s": imgs / (hi - lo), "window_s": hi - lo, "overlap": True,
            "epoch_s_mean": sum(steady) / len(steady)}


def _images_per_epoch(run_dir: Path) -> int:
    m = _read_json(run_dir / "metrics.json") or {}
    cfg = m.get("config", {})
    steps = sum(m.get("class_counts", [])) // int(cfg["train"]["batch_size"])  # drop_last on the fast path
    return steps * int(cfg["train"]["batch_size"])


def _read_json(p: Path):
    try:
        return json.loads(Path(p).read_text())
    except (OSError, ValueError):
        return None


def _read_jsonl(p: Path) -> list[dict]:
    try:
        return [json.loads(x) for x in Path(p).read_text().splitlines() if x.strip()]
    except (OSError, ValueError):
        return []


def _ckpt_epoch(run_dir: Path) -> int:
    """The epoch a run's checkpoint holds (where --resume continues), 0 without one."""
    from allnc.engine.checkpoint import load_checkpoint
    from allnc.errors import RunDirError

    try:
        return int(load_checkpoint(run_dir / "checkpoint.pt")["epoch"])
    except RunDirError:  # missing or damaged: it resumes nothing
        return 0


def _last_epoch(run_dir: Path):
    h = _read_jsonl(run_dir / "metrics.jsonl")
    return h[-1]["epoch"] if h else 0


_GPU_PROBE = r"""
import json, torch
p = torch.cuda.get_device_properties(0)
x = torch.randn(256, 256, device="cuda")
ok = bool(torch.isfinite(x @ x).all())
print(json.dumps({"gpu": p.name, "gpu_memory_gib": round(p.total_memory / 2**30, 1), "sm_count": p.multi_processor_count,
                  "cudnn": torch.backends.cudnn.version(), "cuda_check": ok}))
"""


def _gpu_probe() -> dict:
    """GPU facts from a child process (a CUDA client like every run)."""
    try:
        r = subprocess.run([sys.executable, "-c", _GPU_PROBE], capture_output=True, text=True, timeout=180)
    except (OSError, subprocess.SubprocessError) as e:
        return {"error": f"{type(e).__name__}: {e}"}
    if r.returncode != 0:
        return {"error": (r.stderr.strip().splitlines() or ["?"])[-1][:300]}
    return json.loads(r.stdout.strip().splitlines()[-1])


# torch.compile of a tiny training computation with each backend, in a child process: whether
# code generation works on this machine at all, and the compiler's own words when it does not
_COMPILE_CHECK = r"""
import json, sys, time, traceback, torch
device, backends = sys.argv[1], sys.argv[2:]
torch.manual_seed(0)
x = torch.randn(64, 64, device=device, requires_grad=True)
def f(x):
    return (x.sin() @ x).relu().sum()
out = {}
for b in backends:
    t = time.time()
    try:
        torch._dynamo.reset()
        y = torch.compile(f, backend=b)(x)
        y.backward()
        ok = bool(torch.isclose(y.detach(), f(x.detach()), rtol=1e-3, atol=1e-3))
        if device == "cuda":
            torch.cuda.synchronize()
        out[b] = {"ok": ok, "s": round(time.time() - t, 2)} | ({} if ok else {"error": "wrong value"})
    except Exception as e:
        out[b] = {"ok": False, "s": round(time.time() - t, 2), "error": "".join(traceback.format_exception(e))[-4000:]}
print(json.dumps(out))
"""


def compile_check(device: str, backends: list[str], timeout: float = 240) -> dict:
    """``backend -> {ok, s, error}`` from ``_COMPILE_CHECK`` in a child process."""
    try:
        r = subprocess.run([sys.executable, "-c", _COMPILE_CHECK, device, *backends], capture_output=True, text=True,
                           timeout=timeout)
    except (OSError, subprocess.SubprocessError) as e:
        return {b: {"ok": False, "error": f"{type(e).__name__}: {e}"} for b in backends}
    if r.returncode != 0:
        return {b: {"ok": False, "error": r.stderr[-4000:]} for b in backends}
    return json.loads(r.stdout.strip().splitlines()[-1])


def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        return f"unavailable ({type(e).__name__})"


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "?"


def _f(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def _headward(rec: dict) -> str:
    """The head-ward share of a result's test errors, its even-spread value in brackets."""
    e = rec.get("errors") or {}
    return "-" if e.get("headward") is None else f"{e['headward']:.1f} ({e['headward_if_even']:.1f})"


def make_tiny_cifar(root: Path, per_class: int = 40, test_per_class: int = 4, seed: int = 0) -> Path:
    """A CIFAR-like train/<class>, test/<class> PNG folder (10 classes, 32x32), each class a
    different mean colour so that one epoch learns something."""
    import numpy as np
    from PIL import Image

    rng = np.random.RandomState(seed)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    for split, n in (("train", per_class), ("test", test_per_class)):
        for c, name in enumerate(names):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            base = np.array([(c * 25) % 256, (c * 70) % 256, (255 - c * 25) % 256])
            for i in range(n):
                img = np.clip(base + rng.randint(-40, 40, size=(32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"{i:04d}.png")
    return root


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="the output folder (the device's $OUT)")
    p.add_argument("--plan", default="first", choices=sorted(PLANS))
    p.add_argument("--prefix", default=None, help="config prefix (default: the plan's)")
    p.add_argument("--methods", nargs="+", default=None)
    p.add_argument("--imbalance", nargs="+", type=float, default=None)
    p.add_argument("--seeds", nargs="+", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--deadline", type=float, default=500.0, help="seconds from the start for everything")
    p.add_argument("--data-root", default=None)
    p.add_argument("--data-label", default="CIFAR-10 (JPEG q75 copy)")
    p.add_argument("--cache-dir", default=None, help="decoded-image cache (data.cache_dir)")
    p.add_argument("--results", default="results", help="the results folder (one JSON per cell)")
    p.add_argument("--work", default=None, help="where run directories go (default OUT/../allnc-suite-work)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--compile-mode", default="reduce-overhead")
    p.add_argument("--smoke-methods", nargs="+", default=None,
                   help="methods of the one-epoch smoke (default: CE, AllNC and the methods with plan cells "
                        "still to do, so that the plan finds every compiled graph in the cache)")
    p.add_argument("--concurrency", type=int, default=None, help="N of the 1-versus-N measurement (default: plan size)")
    p.add_argument("--plan-concurrency", type=int, default=0, help="runs at once in the plan (0: decided from speed)")
    p.add_argument("--workers", type=int, default=8, help="DataLoader workers of the conventional path")
    p.add_argument("--speed-epochs", type=int, default=12)
    p.add_argument("--speed-epochs-conv", type=int, default=2)
    p.add_argument("--speed-budget-s", type=float, default=60.0)
    p.add_argument("--smoke-s", type=float, default=170.0)
    p.add_argument("--plan-reserve-s", type=float, default=260.0, help="speed stops early to leave the plan this much")
    p.add_argument("--pack-reserve-s", type=float, default=10.0)
    p.add_argument("--resume-from", default=None, help="an earlier suite's resume.tar: continue its unfinished runs")
    p.add_argument("--resume-cap-mib", type=float, default=15.0, help="resume.tar holds at most this much")
    p.add_argument("--models-cap-mib", type=float, default=15.0, help="models.tar holds at most this much")
    p.add_argument("--no-speed", action="store_true")
    p.add_argument("--no-smoke", action="store_true",
                   help="no smoke stage: each plan run starts at --compile-mode and falls back on its own "
                        "(the smoke is skipped anyway when every plan cell has its results file)")
    p.add_argument("--no-mps", dest="mps", action="store_false")
    p.add_argument("--tiny", action="store_true", help="CPU, tiny generated data, one epoch: the suite end to end")
    a = p.parse_args(argv)
    plan = PLANS[a.plan]
    a.prefix = a.prefix or plan["prefix"]
    a.methods = a.methods or plan["methods"]
    a.imbalance = a.imbalance or plan["imbalance"]
    a.seeds = a.seeds if a.seeds is not None else plan["seeds"]
    epochs_given = a.epochs
    a.epochs = a.epochs or plan["epochs"]
    if a.tiny and not a.smoke_methods:
        a.smoke_methods = ["ce", "allnc"]
    a.work = a.work or str(Path(a.out).resolve().parent / (Path(a.out).name + "-work"))
    if a.tiny:
        a.device = "cpu"
        a.epochs = epochs_given or 1
        a.imbalance = [10.0]
        a.speed_epochs, a.speed_epochs_conv = 2, 1
        a.data_label = "tiny generated CIFAR-like images"
        if a.data_root is None:
            a.data_root = str(make_tiny_cifar(Path(a.work) / "tiny-data"))
        a.workers = 0
        a.plan_reserve_s = 0.0
    if a.data_root is None:
        p.error("--data-root is required (or --tiny)")
    if a.concurrency is None:
        a.concurrency = min(len(a.methods) * len(a.imbalance) * len(a.seeds), 8) if not a.tiny else 2
    return a


def main(argv=None) -> int:
    return Suite(parse(argv)).run()


if __name__ == "__main__":
    raise SystemExit(main())

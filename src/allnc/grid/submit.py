"""Grids through submitit (``allnc grid GRID.yaml --executor slurm|local``): the same runs,
skipping and resuming as ``allnc.grid.runner``, but each run is a submitit job (a Slurm job,
or a local process under submitit's local executor) instead of a child of this process.

Each job decides on its node, when it starts, what its run needs: nothing (``metrics.json``
is there), ``--resume`` (a checkpoint is there), or a fresh start (leftovers of an attempt
without a checkpoint are set aside to ``OUT/_attempts/`` first). It then runs exactly the
command the process runner builds (``default_command``: ``python -m allnc train --config C
--out RUNDIR k=v ...``) with its stdout and stderr in ``RUNDIR/log.txt``. A Slurm job that
reaches its time limit is requeued by submitit and continues from its last checkpoint. This
process waits for every job, then writes the summaries like the process runner.

Job options come from the grid's ``slurm:`` mapping (``SLURM_KEYS``); ``max_concurrent`` is
the job array's parallelism on Slurm and the number of jobs at once on the local executor.
Submitit's own files (job pickles and logs) go to ``OUT/_submitit/``. One job is one
process; a data-parallel run inside a job is started with torchrun, as without a grid
(docs/tracking_and_clusters.md). Needs ``pip install allnc[submitit]``.
"""
from __future__ import annotations

import difflib
import importlib.util
import os
import re
import subprocess
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Optional, Union

from ..errors import ConfigError
from ..rundir import CHECKPOINT, METRICS
from .expand import RunSpec
from .runner import GridResult, _command, _failed, _has_leftovers, _list_plan, _load, _LogPump, _set_aside, _sort_out
from .summary import write_summaries

__all__ = ["EXECUTORS", "SLURM_KEYS", "GridJob", "executor_parameters", "submit_grid"]

EXECUTORS = ("slurm", "local")
# the grid's slurm: keys -> submitit's AutoExecutor parameters
SLURM_KEYS = {
    "partition": "slurm_partition",
    "time": "timeout_min",  # minutes, or Slurm's D-HH:MM:SS / HH:MM:SS / MM:SS
    "gpus_per_node": "gpus_per_node",
    "cpus_per_task": "cpus_per_task",
    "mem_gb": "mem_gb",
    "account": "slurm_account",
    "qos": "slurm_qos",
    "constraint": "slurm_constraint",
    "setup": "slurm_setup",  # shell lines run before the job (module load ..., source .venv/bin/activate)
    "additional": "slurm_additional_parameters",  # any other sbatch option: {reservation: x, ...}
}
LOCAL_TIME_MIN = 7 * 24 * 60  # the local executor kills a job after 2 minutes unless told otherwise


def _minutes(v: Any) -> int:
    """Slurm's time forms (M, M:S, H:M:S, D-H, D-H:M, D-H:M:S) or a number of minutes."""
    if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0:
        return max(1, int(round(v)))
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", str(v).strip())
    if not m or isinstance(v, bool):
        raise ConfigError(f"grid slurm.time={v!r} is not a time limit; give minutes (240) or D-HH:MM:SS (1-00:00:00)")
    d, a, b, c = (int(x) if x else None for x in m.groups())
    if d is not None:  # D-H, D-H:M, D-H:M:S
        h, mi, s = a, b or 0, c or 0
        total = d * 1440 + h * 60 + mi + s / 60
    elif c is not None:  # H:M:S
        total = a * 60 + b + c / 60
    elif b is not None:  # M:S
        total = a + b / 60
    else:  # M
        total = a
    if total <= 0:
        raise ConfigError(f"grid slurm.time={v!r} is not a positive time limit")
    return max(1, int(round(total)))


def executor_parameters(data: dict, executor: str, max_concurrent: int, name: str) -> dict[str, Any]:
    """submitit's ``update_parameters`` for the grid's ``slurm:`` mapping on ``executor``."""
    if executor not in EXECUTORS:
        raise ConfigError(f"grid executor '{executor}' is not one of: process, {', '.join(EXECUTORS)}")
    slurm = data.get("slurm") or {}
    if not isinstance(slurm, dict):
        raise ConfigError("grid slurm: must be a mapping, e.g. {partition: gpu, time: 240, gpus_per_node: 1}")
    for k in slurm:
        if k not in SLURM_KEYS:
            close = difflib.get_close_matches(str(k), list(SLURM_KEYS), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(SLURM_KEYS)}"
            raise ConfigError(f"unknown key '{k}' in the grid's slurm:{hint}")
    params: dict[str, Any] = {"name": f"allnc-{name}", "nodes": 1, "tasks_per_node": 1}
    for k, v in slurm.items():
        if v is None:
            continue
        if k == "time":
            params["timeout_min"] = _minutes(v)
        elif k in ("gpus_per_node", "cpus_per_task"):
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ConfigError(f"grid slurm.{k}={v!r} must be a whole number >= 0")
            params[SLURM_KEYS[k]] = v
        elif k == "mem_gb":
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0:
                raise ConfigError(f"grid slurm.mem_gb={v!r} must be a positive number of GB")
            params["mem_gb"] = v
        elif k == "setup":
            params["slurm_setup"] = [str(x) for x in (v if isinstance(v, list) else [v])]
        elif k == "additional":
            if not isinstance(v, dict):
                raise ConfigError("grid slurm.additional must map sbatch options to values, e.g. {reservation: r1}")
            params["slurm_additional_parameters"] = dict(v)
        else:
            params[SLURM_KEYS[k]] = str(v)
    if executor == "slurm":
        if "timeout_min" not in params:
            raise ConfigError("--executor slurm needs the grid's slurm.time (minutes or D-HH:MM:SS): submitit's "
                              "default would end every job after 5 minutes")
        params["slurm_array_parallelism"] = max_concurrent
    else:  # the local executor reads the generic keys only
        params = {k: v for k, v in params.items() if not k.startswith("slurm_")}
        params.setdefault("timeout_min", LOCAL_TIME_MIN)
    return params


class GridJob:
    """One grid run as a submitit job: picklable, and checkpointable (a Slurm job at its time
    limit is requeued; the new attempt resumes from the run's checkpoint)."""

    def __init__(self, spec: RunSpec, out_dir: Path, command: Callable[[RunSpec, bool], list[str]],
                 threads: Optional[int] = None):
        self.spec, self.out_dir, self.command, self.threads = spec, Path(out_dir), command, threads

    def __call__(self) -> int:
        s = self.spec
        if (s.run_dir / METRICS).is_file():
            return 0
        resume = (s.run_dir / CHECKPOINT).is_file()
        note = ""
        if not resume and _has_leftovers(s.run_dir):
            note = f" (an earlier attempt without checkpoint moved to {_set_aside(s.run_dir, self.out_dir)})"
        s.run_dir.mkdir(parents=True, exist_ok=True)  # empty: the trainer accepts it
        argv = self.command(s, resume)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        threads = os.environ.get("SLURM_CPUS_PER_TASK") or (str(self.threads) if self.threads else None)
        if threads and "OMP_NUM_THREADS" not in os.environ:
            env["OMP_NUM_THREADS"] = threads
        header = (f"# allnc grid (submitit) {time.strftime('%Y-%m-%d %H:%M:%S')} on {os.uname().nodename}{note}: "
                  f"{' '.join(argv)}\n")
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        pump = _LogPump(p, s.run_dir, header)
        pump.start()
        try:
            rc = p.wait()
        except BaseException:  # submitit's timeout or a cancel: stop the run, its checkpoint stays
            p.terminate()
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
            raise
        finally:
            pump.join(timeout=30)
        return rc

    def checkpoint(self, *args: Any, **kwargs: Any):
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def _need_submitit(executor: str) -> None:
    if importlib.util.find_spec("submitit") is None:
        raise ConfigError(f"--executor {executor} needs the submitit package: pip install allnc[submitit]")


def submit_grid(
    spec: Union[str, Path, dict],
    executor: str = "slurm",
    dry_run: bool = False,
    command: Optional[Callable[[RunSpec, bool], list[str]]] = None,
    max_concurrent: Optional[int] = None,
    out: Union[str, Path, None] = None,
    log: Callable[[str], None] = print,
    poll_s: float = 2.0,
) -> GridResult:
    """Expand a grid and run it as submitit jobs on ``executor`` (``slurm`` or ``local``);
    returns a ``GridResult`` like ``run_grid``. ``command(run, resume) -> argv`` as there
    (default ``default_command``; every config is validated before anything is submitted);
    it is pickled into the jobs."""
    data, out_dir, specs, conc = _load(spec, out, max_concurrent)
    params = executor_parameters(data, executor, conc, out_dir.name)
    command = _command(command, specs)
    result, todo = _sort_out(specs, out_dir, dry_run)
    n = len(specs)
    log(f"grid: {n} runs in {out_dir} ({len(result.skipped)} finished already, {len(todo)} to run) as submitit "
        f"{executor} jobs, {conc} at once; " + ", ".join(f"{k}={v}" for k, v in params.items()))
    if dry_run:
        _list_plan(result, todo, command, log)
        return result
    _need_submitit(executor)
    import submitit

    out_dir.mkdir(parents=True, exist_ok=True)
    ex = submitit.AutoExecutor(folder=out_dir / "_submitit" / "%j", cluster=executor)
    ex.update_parameters(**params)
    threads = max(1, (os.cpu_count() or 1) // conc) if executor == "local" and conc > 1 else None
    jobs_of = {s.name: GridJob(s, out_dir, command, threads) for s, _ in todo}

    running: dict[Any, tuple[RunSpec, float]] = {}
    pending = deque(s for s, _ in todo)
    started = 0

    def submit(batch: list[RunSpec]) -> None:
        nonlocal started
        if executor == "slurm" and len(batch) > 1:
            with ex.batch():  # one job array, at most max_concurrent running
                jobs = [ex.submit(jobs_of[s.name]) for s in batch]
        else:
            jobs = [ex.submit(jobs_of[s.name]) for s in batch]
        for s, job in zip(batch, jobs):
            started += 1
            running[job] = (s, time.monotonic())
            log(f"[{started}/{len(todo)}] submitted {s.name}: job {job.job_id}")

    try:
        while pending or running:
            if executor == "slurm":  # everything at once: Slurm queues and throttles the array
                batch = list(pending)
            else:
                batch = [pending[i] for i in range(min(len(pending), conc - len(running)))]
            for _ in batch:
                pending.popleft()
            if batch:
                submit(batch)
            for job in list(running):
                if not job.done():
                    continue
                s, t0 = running.pop(job)
                secs = time.monotonic() - t0
                try:
                    rc = job.result()
                    why = None if rc == 0 else f"exit status {rc}"
                except Exception as e:  # noqa: BLE001 (a failed job: submitit's error names it)
                    why = f"job {job.job_id} failed: {(str(e).strip().splitlines() or [type(e).__name__])[-1]}"
                if why is None and (s.run_dir / METRICS).is_file():
                    result.done.append(s)
                    log(f"  done   {s.name} ({secs:.0f} s)")
                    continue
                _failed(result, s, why or f"exited 0 but wrote no {METRICS}", "", log)
            if running:
                time.sleep(poll_s)
    except BaseException:
        for job in running:  # as the process runner stops its children: checkpoints stay, a rerun resumes
            try:
                job.cancel(check=False)
            except Exception:  # noqa: BLE001
                pass
        raise

    result.summary = write_summaries(out_dir, [s.run_dir for s in specs])
    log(result.summary)
    if result.failed:
        log(f"grid: {len(result.failed)} of {n} runs failed: " + ", ".join(s.name for s in result.failed))
    else:
        log(f"grid: all {n} runs finished; summary in {out_dir / 'summary.md'} (.csv, .json)")
    return result

"""Grid runner: the runs of a grid as concurrent processes (at most ``max_concurrent`` at
once, one free GPU each where ``devices:`` is given), each with its output pumped into
``RUNDIR/log.txt``; finished runs are skipped, checkpointed ones resumed, the leftovers of
attempts that died before their first checkpoint set aside; an optional deadline stops what
is still running. At the end the summaries are written (``allnc.grid.summary``). The grid
format is described in ``allnc.grid.expand``.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

from ..errors import ConfigError
from ..rundir import CHECKPOINT, CONFIG, LOG, METRICS
from .expand import RunSpec, expand_grid, load_grid
from .summary import write_summaries

__all__ = ["GridResult", "default_command", "run_grid"]


@dataclass
class GridResult:
    out_dir: Path
    runs: list[RunSpec]
    done: list[RunSpec] = field(default_factory=list)  # ran now and wrote metrics.json
    skipped: list[RunSpec] = field(default_factory=list)  # had metrics.json already
    failed: list[RunSpec] = field(default_factory=list)
    unfinished: list[RunSpec] = field(default_factory=list)  # stopped at the deadline (resumable)
    not_started: list[RunSpec] = field(default_factory=list)  # still waiting at the deadline
    reasons: dict[str, str] = field(default_factory=dict)  # run name -> why it failed
    summary: str = ""
    dry_run: bool = False

    @property
    def failures(self) -> int:
        return len(self.failed)


def default_command(spec: RunSpec, resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "allnc", "train", "--config", spec.config, "--out", str(spec.run_dir)]
    if resume:
        cmd.append("--resume")
    return cmd + list(spec.overrides)


def _validate_configs(specs: list[RunSpec]) -> None:
    """Every run's config resolves; a run directory that already holds a run (finished, to be
    skipped, or checkpointed, to be resumed) holds one of this config: a grid changed since
    (other extra_overrides, epochs, settings) would otherwise report the old runs as its own."""
    from ..config import load_config

    for s in specs:
        try:
            cfg = load_config(s.config, s.overrides)
        except ConfigError as e:
            raise ConfigError(f"grid run {s.name}: {e}") from None
        _check_existing_run(s, cfg)


def _check_existing_run(s: RunSpec, cfg) -> None:
    from omegaconf import OmegaConf

    from ..config import flatten, to_dict
    from ..engine.context import is_runtime

    saved_file = s.run_dir / CONFIG
    if not saved_file.is_file() or not ((s.run_dir / METRICS).is_file() or (s.run_dir / CHECKPOINT).is_file()):
        return  # nothing there, or an attempt that never checkpointed (set aside and started again)
    try:
        saved = flatten(to_dict(OmegaConf.load(saved_file)))
    except Exception:  # noqa: BLE001 - a damaged config.yaml is the run's own problem, reported when it runs
        return
    new = flatten(to_dict(cfg))
    for k in sorted(set(saved) & set(new)):  # a key newer or older than the run had its default then
        if not is_runtime(k) and saved[k] != new[k]:
            raise ConfigError(f"grid run {s.name}: {s.run_dir} holds a run made with {k}={saved[k]!r}, but "
                              f"the grid now gives {k}={new[k]!r}; give the changed grid another out folder, "
                              "or delete that run directory to run it again")


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").rstrip().splitlines()
    except OSError:
        return ""
    return "\n".join("    " + ln for ln in text[-lines:])


class _LogPump(threading.Thread):
    """Copies a child's merged stdout/stderr into RUNDIR/log.txt.

    The log file is only created once the run directory holds something else (the run has
    taken its lock; the trainer counts log.txt, like the lock, as a run's own file); until
    then the output is kept in memory. A run that ends before
    that gets its log written at the end."""

    def __init__(self, proc: subprocess.Popen, run_dir: Path, header: str):
        super().__init__(daemon=True)
        self.proc = proc
        self.run_dir = run_dir
        self.buf: list[bytes] = [header.encode()]
        self.fh: Any = None

    def _ready(self) -> bool:
        try:
            return any(p.name != LOG for p in self.run_dir.iterdir())
        except OSError:
            return False

    def _open(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.fh = open(self.run_dir / LOG, "ab")
        self.fh.write(b"".join(self.buf))
        self.buf = []

    def run(self) -> None:
        stream = self.proc.stdout
        try:
            while True:
                chunk = stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536)
                if not chunk:
                    break
                if self.fh is None and self._ready():
                    self._open()
                if self.fh is not None:
                    self.fh.write(chunk)
                    self.fh.flush()
                else:
                    self.buf.append(chunk)
        finally:
            if self.fh is None:
                self._open()
            self.fh.close()
            stream.close()


def _set_aside(run_dir: Path, out_dir: Path) -> Path:
    """Move the leftovers of an attempt that died before its first checkpoint out of the way
    (to OUT/_attempts/NAME__TIME), so the run can start afresh in an empty directory."""
    dest_root = out_dir / "_attempts"
    dest_root.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest = dest_root / f"{run_dir.name}__{stamp}"
    k = 1
    while dest.exists():
        k += 1
        dest = dest_root / f"{run_dir.name}__{stamp}-{k}"
    shutil.move(str(run_dir), str(dest))
    return dest


def _has_leftovers(run_dir: Path) -> bool:
    return run_dir.is_dir() and any(run_dir.iterdir())


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + 10
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _load(spec, out, max_concurrent) -> tuple[dict, Path, list[RunSpec], int]:
    """A grid's data, output folder, runs and concurrency (``max_concurrent`` over the grid's own)."""
    data, base_dir, default_out = load_grid(spec)
    out_dir = Path(out if out is not None else data.get("out") or default_out)
    specs = expand_grid(data, base_dir=base_dir, out_dir=out_dir)
    conc = max_concurrent if max_concurrent is not None else data.get("max_concurrent", 1)
    if not isinstance(conc, int) or isinstance(conc, bool) or conc < 1:
        raise ConfigError(f"grid max_concurrent must be an integer >= 1, got {conc!r}")
    return data, out_dir, specs, conc


def _command(command, specs: list[RunSpec]):
    """The default command validates every run's config first; a given one is taken as it is."""
    if command is not None:
        return command
    _validate_configs(specs)
    return default_command


def _sort_out(specs: list[RunSpec], out_dir: Path, dry_run: bool) -> tuple[GridResult, list[tuple[RunSpec, bool]]]:
    """Finished runs (with metrics.json) are skipped; the others are to run, resumed where a
    checkpoint exists: (run, resume)."""
    result = GridResult(out_dir=out_dir, runs=specs, dry_run=dry_run)
    todo: list[tuple[RunSpec, bool]] = []
    for s in specs:
        if (s.run_dir / METRICS).is_file():
            result.skipped.append(s)
        else:
            todo.append((s, (s.run_dir / CHECKPOINT).is_file()))
    return result, todo


def _list_plan(result: GridResult, todo: list[tuple[RunSpec, bool]], command, log: Callable[[str], None]) -> None:
    """A dry run's listing: what is skipped, and the command of each run to come."""
    for s in result.skipped:
        log(f"  skip    {s.name} (has {METRICS})")
    for s, resume in todo:
        what = "resume" if resume else ("restart" if _has_leftovers(s.run_dir) else "run")
        log(f"  {what:7s} {s.name}: {' '.join(command(s, resume))}")


def _failed(result: GridResult, s: RunSpec, why: str, when: str, log: Callable[[str], None]) -> None:
    """Record a failed run and say why, with the end of its log."""
    result.failed.append(s)
    result.reasons[s.name] = why
    log(f"  FAILED {s.name}: {why}{when}; log: {s.run_dir / LOG}")
    tail = _tail(s.run_dir / LOG)
    if tail:
        log(tail)


def run_grid(
    spec: Union[str, Path, dict],
    dry_run: bool = False,
    command: Optional[Callable[[RunSpec, bool], list[str]]] = None,
    max_concurrent: Optional[int] = None,
    out: Union[str, Path, None] = None,
    log: Callable[[str], None] = print,
    poll_s: float = 0.05,
    deadline: Optional[float] = None,
    status_every_s: float = 60.0,
    on_done: Optional[Callable[[RunSpec, float], None]] = None,
) -> GridResult:
    """Expand and run a grid (the format: ``allnc.grid.expand``); returns a ``GridResult`` whose
    ``failures`` counts the failed runs.

    ``command(run, resume) -> argv`` builds each process's command (default
    ``default_command``: ``python -m allnc train ...``); with the default command every
    run's config and overrides are validated before anything starts.

    ``deadline`` (a ``time.monotonic()`` value): runs still going then are stopped and
    listed as ``unfinished`` (their last checkpoint stays, so running the grid again
    resumes them), runs not yet started as ``not_started``; neither is a result.
    ``on_done(run, seconds)`` is called as soon as each run has written its metrics.json."""
    data, out_dir, specs, conc = _load(spec, out, max_concurrent)
    devices = data.get("devices")
    if devices is not None:
        if isinstance(devices, (int, str)):
            devices = [devices]
        if not isinstance(devices, list) or not devices:
            raise ConfigError("grid devices: must be a non-empty list of GPU ids, e.g. [0, 1]")
        devices = [str(d) for d in devices]
        conc = min(conc, len(devices)) if max_concurrent is not None or "max_concurrent" in data else len(devices)
    command = _command(command, specs)
    result, todo = _sort_out(specs, out_dir, dry_run)
    n = len(specs)
    log(f"grid: {n} runs in {out_dir} ({len(result.skipped)} finished already, {len(todo)} to run, "
        f"{conc} at once)")
    if dry_run:
        _list_plan(result, todo, command, log)
        return result

    out_dir.mkdir(parents=True, exist_ok=True)
    pending = deque(todo)
    free = deque(devices) if devices else None
    running: dict[subprocess.Popen, tuple[RunSpec, float, _LogPump, Optional[str]]] = {}
    started = 0
    t_grid = last_status = time.monotonic()
    try:
        while pending or running:
            if deadline is not None and time.monotonic() >= deadline:
                stopping = [running[p][0] for p in running]
                _stop(list(running))
                for _, _, pump, _ in running.values():
                    pump.join(timeout=5)
                running.clear()
                result.unfinished.extend(stopping)
                result.not_started.extend(s for s, _ in pending)
                pending.clear()
                for s in stopping:
                    log(f"  STOPPED {s.name}: the deadline came before it finished (not a result; resumable)")
                for s in result.not_started:
                    log(f"  NOT STARTED {s.name}: the deadline came first")
                break
            while pending and len(running) < conc:
                s, resume = pending.popleft()
                started += 1
                note = ""
                if not resume and _has_leftovers(s.run_dir):
                    note = f" (an earlier attempt without checkpoint moved to {_set_aside(s.run_dir, out_dir)})"
                s.run_dir.mkdir(parents=True, exist_ok=True)  # empty: the trainer accepts it
                argv = command(s, resume)
                env = dict(os.environ, PYTHONUNBUFFERED="1")
                if conc > 1 and "OMP_NUM_THREADS" not in os.environ:
                    # share the CPU cores instead of oversubscribing them
                    env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // conc))
                dev = free.popleft() if free else None
                if dev is not None:
                    env["CUDA_VISIBLE_DEVICES"] = dev
                header = f"# allnc grid {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(argv)}\n"
                try:
                    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
                except OSError as e:
                    if dev is not None:
                        free.append(dev)
                    s.run_dir.mkdir(parents=True, exist_ok=True)
                    (s.run_dir / LOG).open("a").write(header + f"could not start: {e}\n")
                    result.failed.append(s)
                    result.reasons[s.name] = f"could not start: {e}"
                    log(f"[{started}/{len(todo)}] FAILED {s.name}: could not start ({e})")
                    continue
                pump = _LogPump(p, s.run_dir, header)
                pump.start()
                running[p] = (s, time.monotonic(), pump, dev)
                where = f" on GPU {dev}" if dev is not None else ""
                log(f"[{started}/{len(todo)}] {'resume' if resume else 'start'} {s.name}{where}{note}")
            for p in list(running):
                rc = p.poll()
                if rc is None:
                    continue
                s, t0, pump, dev = running.pop(p)
                pump.join(timeout=30)
                if dev is not None and free is not None:
                    free.append(dev)
                secs = time.monotonic() - t0
                if rc == 0 and (s.run_dir / METRICS).is_file():
                    result.done.append(s)
                    log(f"  done   {s.name} ({secs:.0f} s)")
                    if on_done is not None:
                        on_done(s, secs)
                    continue
                _failed(result, s, (f"exit status {rc}" if rc != 0 else f"exited 0 but wrote no {METRICS}"),
                        f" after {secs:.0f} s", log)
            if running:
                time.sleep(poll_s)
                now = time.monotonic()
                if now - last_status >= status_every_s:  # a grid of long runs says what it is doing
                    last_status = now
                    names = ", ".join(f"{r[0].name} ({now - r[1]:.0f} s)" for r in running.values())
                    log(f"grid: {len(result.done)} done, {len(running)} running ({names}), {len(pending)} waiting, "
                        f"{len(result.failed)} failed; {now - t_grid:.0f} s so far")
    except BaseException:
        _stop(list(running))
        for _, _, pump, _ in running.values():
            pump.join(timeout=5)
        raise

    result.summary = write_summaries(out_dir, [s.run_dir for s in specs])
    log(result.summary)
    if result.unfinished or result.not_started:
        log(f"grid: the deadline stopped {len(result.unfinished)} runs and {len(result.not_started)} did not start")
    if result.failed:
        log(f"grid: {len(result.failed)} of {n} runs failed: " + ", ".join(s.name for s in result.failed))
    elif not (result.unfinished or result.not_started):
        log(f"grid: all {n} runs finished; summary in {out_dir / 'summary.md'} (.csv, .json)")
    return result

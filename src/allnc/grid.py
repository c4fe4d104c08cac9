"""``allnc grid GRID.yaml``: run a grid of configs x overrides x seeds as concurrent
processes, resume an interrupted grid, and summarize the finished runs.

A grid YAML holds an explicit ``runs:`` list and/or a product form::

    out: runs/sweep            # the grid directory (relative to the current directory)
    max_concurrent: 2          # processes at once (default 1)
    seeds: [0, 1, 2]           # every run once per seed (adds seed=S); omit to keep the config's seed
    extra_overrides: [train.epochs=5]   # appended to every run
    devices: [0, 1]            # optional: each process gets one free CUDA_VISIBLE_DEVICES entry
    runs:                      # explicit runs
      - {config: fmnist_lt_ce, overrides: [method.sampler=balanced], name: ce_bal}
    configs: [fmnist_lt_ce, fmnist_lt_la]      # product form: configs x overrides x seeds
    overrides: {train.lr: [0.1, 0.05], train.batch_size: [64, 128]}

Each run gets the directory ``OUT/<config>__<k=v>__...__seed<S>`` (``OUT/<name>__seed<S>``
when named) and is started as ``python -m allnc train --config C --out RUNDIR k=v ...``
with its stdout and stderr appended to ``RUNDIR/log.txt``. A run whose directory has a
``metrics.json`` is skipped, one with a checkpoint but no ``metrics.json`` is continued
with ``--resume``: running a grid again resumes it (the leftovers of an attempt that died
before its first checkpoint are moved to ``OUT/_attempts/`` and the run starts afresh). A failed run is reported and the others
go on. At the end a markdown table of top-1 and many/medium/few accuracy (mean ± sample
std over seeds) is written to ``OUT/summary.md`` and printed.
"""
from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import yaml

from .errors import ConfigError
from .config import read_yaml_mapping

__all__ = ["RunSpec", "GridResult", "expand_grid", "load_grid", "run_grid", "summarize", "default_command"]

CHECKPOINT = "checkpoint.pt"  # allnc.engine.checkpoint.CHECKPOINT (not imported: it pulls in torch)
METRICS = "metrics.json"
LOG = "log.txt"
_KEYS = ("runs", "configs", "overrides", "seeds", "out", "max_concurrent", "extra_overrides", "devices")
_RUN_KEYS = ("config", "overrides", "name")
_SEED_RE = re.compile(r"__seed-?\d+$")


@dataclass
class RunSpec:
    """One process of the grid."""

    name: str  # the run directory's name
    group: str  # the name without the seed suffix: runs of one group differ only by seed
    config: str  # what --config gets (a built-in name or a YAML path)
    overrides: list[str]  # key=value, in order (the run's, then extra_overrides, then seed=S)
    seed: Optional[int]
    run_dir: Path


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

    @property
    def exit_code(self) -> int:
        return min(self.failures, 125)


# ------------------------------------------------------------------------ expansion
def _fmt_value(v: Any) -> str:
    """A value as the text of a key=value override (YAML, flow style for lists and maps)."""
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, int):
        return repr(v)
    if isinstance(v, float):
        r = repr(v)
        if "e" in r and "." not in r:  # PyYAML reads 1e-05 as a string, 1.0e-05 as a float
            mant, exp = r.split("e")
            r = f"{mant}.0e{exp}"
        return r
    text = yaml.safe_dump(v, default_flow_style=True, width=10**9).strip()
    return text[:-4].strip() if text.endswith("\n...") else text


def _safe(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._=+-]+", "-", str(text)).strip("-")
    return s or "x"


def _short(name: str, limit: int = 180) -> str:
    if len(name) <= limit:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:10]
    return f"{name[: limit - 12]}-{digest}"


def _override_label(text: str) -> str:
    if "=" not in text:
        raise ConfigError(f"grid override '{text}' is not of the form key=value (for example train.lr=0.05)")
    k, v = text.split("=", 1)
    return f"{_safe(k.strip())}={_safe(v.strip())}"


def _config_label(config: str) -> str:
    p = Path(config)
    looks_like_file = p.suffix in (".yaml", ".yml") or "/" in config or os.sep in config
    return _safe(p.stem if looks_like_file else config)


def _resolve_config(config: str, base_dir: Optional[Path]) -> str:
    """A config YAML named relative to the grid file becomes an absolute path; built-in
    names and other paths pass through."""
    if base_dir is not None and not Path(config).is_absolute():
        for cand in (base_dir / config, base_dir / f"{config}.yaml"):
            if cand.is_file():
                return str(cand.resolve())
    return config


def _check_keys(d: dict, allowed: Sequence[str], where: str) -> None:
    for k in d:
        if k not in allowed:
            close = difflib.get_close_matches(str(k), allowed, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(allowed)}"
            raise ConfigError(f"unknown key '{k}' in {where}{hint}")


def _str_list(v: Any, where: str) -> list[str]:
    if v is None:
        return []
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list):
        raise ConfigError(f"{where} must be a list of key=value strings")
    out = []
    for item in v:
        if isinstance(item, dict):  # {key: value} written as a mapping
            out.extend(f"{k}={_fmt_value(x)}" for k, x in item.items())
        else:
            out.append(str(item))
    for o in out:
        _override_label(o)  # validates the form
    return out


def expand_grid(spec: dict, base_dir: Union[str, Path, None] = None, out_dir: Union[str, Path, None] = None) -> list[RunSpec]:
    """The grid's runs, one per (explicit run or product combination) x seed.

    ``base_dir``: where config YAMLs named relatively are looked up (the grid file's
    folder); ``out_dir``: the grid directory (default: ``spec["out"]``, else ``runs/grid``)."""
    if not isinstance(spec, dict):
        raise ConfigError("a grid must be a mapping with runs: and/or configs:")
    _check_keys(spec, _KEYS, "the grid")
    base = Path(base_dir) if base_dir is not None else None
    out = Path(out_dir if out_dir is not None else spec.get("out") or "runs/grid")
    seeds = spec.get("seeds")
    if seeds is None:
        seed_list: list[Optional[int]] = [None]
    else:
        if isinstance(seeds, int) and not isinstance(seeds, bool):
            seeds = [seeds]
        if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
            raise ConfigError("grid seeds must be a non-empty list of integers, e.g. seeds: [0, 1, 2]")
        if len(set(seeds)) != len(seeds):
            raise ConfigError(f"grid seeds {seeds} repeat a seed")
        seed_list = list(seeds)
    extra = _str_list(spec.get("extra_overrides"), "extra_overrides")

    # (label, config, overrides) before seeds
    bases: list[tuple[str, str, list[str]]] = []
    runs = spec.get("runs") or []
    if not isinstance(runs, list):
        raise ConfigError("grid runs: must be a list of {config: ..., overrides: [...], name: ...}")
    for i, r in enumerate(runs):
        if isinstance(r, str):
            r = {"config": r}
        if not isinstance(r, dict) or "config" not in r:
            raise ConfigError(f"grid runs[{i}] needs a config: (a built-in name or a YAML file)")
        _check_keys(r, _RUN_KEYS, f"grid runs[{i}]")
        ovr = _str_list(r.get("overrides"), f"grid runs[{i}].overrides")
        cfg = str(r["config"])
        label = _safe(str(r["name"])) if r.get("name") else "__".join([_config_label(cfg)] + [_override_label(o) for o in ovr])
        bases.append((label, cfg, ovr))

    configs = spec.get("configs")
    product = spec.get("overrides") or {}
    if configs is None and product:
        raise ConfigError("grid overrides: (the product form) needs configs: [...] to apply to")
    if configs is not None:
        if isinstance(configs, str):
            configs = [configs]
        if not isinstance(configs, list) or not configs:
            raise ConfigError("grid configs: must be a non-empty list of config names or YAML files")
        if not isinstance(product, dict):
            raise ConfigError("grid overrides: must map each key to a list of values, e.g. {train.lr: [0.1, 0.05]}")
        keys = list(product)
        values = []
        for k in keys:
            v = product[k]
            v = v if isinstance(v, list) else [v]
            if not v:
                raise ConfigError(f"grid overrides: '{k}' has an empty list of values")
            values.append(v)
        for cfg in configs:
            for combo in itertools.product(*values):
                ovr = [f"{k}={_fmt_value(v)}" for k, v in zip(keys, combo)]
                label = "__".join([_config_label(str(cfg))] + [_override_label(o) for o in ovr])
                bases.append((label, str(cfg), ovr))
    if not bases:
        raise ConfigError("the grid has no runs: give runs: [...] and/or configs: [...]")

    specs: list[RunSpec] = []
    seen: dict[str, int] = {}
    for label, cfg, ovr in bases:
        for s in seed_list:
            if s is not None and any(o.split("=", 1)[0].strip() == "seed" for o in ovr + extra):
                raise ConfigError("the grid sets seed both in seeds: and in an override; keep one")
            name = _short(label if s is None else f"{label}__seed{s}")
            if name in seen:
                raise ConfigError(f"two grid runs share the run directory '{name}'; give them distinct names")
            seen[name] = len(specs)
            overrides = list(ovr) + list(extra) + ([f"seed={s}"] if s is not None else [])
            specs.append(RunSpec(name, _SEED_RE.sub("", name) if s is not None else name,
                                 _resolve_config(cfg, base), overrides, s, out / name))
    return specs


def load_grid(spec_or_path: Union[str, Path, dict]) -> tuple[dict, Optional[Path], str]:
    """(spec, base_dir, default out) of a grid YAML path or an already loaded dict."""
    if isinstance(spec_or_path, dict):
        return dict(spec_or_path), None, "runs/grid"
    path = Path(spec_or_path)
    if not path.is_file():
        raise ConfigError(f"grid file {path} does not exist")
    spec = read_yaml_mapping(path, "grid file", "runs:, configs:, seeds:, out:, ...")
    return spec, path.parent, f"runs/{_safe(path.stem)}"


# ---------------------------------------------------------------------------- running
def default_command(spec: RunSpec, resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "allnc", "train", "--config", spec.config, "--out", str(spec.run_dir)]
    if resume:
        cmd.append("--resume")
    return cmd + list(spec.overrides)


def _validate_configs(specs: list[RunSpec]) -> None:
    from .config import load_config

    for s in specs:
        try:
            load_config(s.config, s.overrides)
        except ConfigError as e:
            raise ConfigError(f"grid run {s.name}: {e}") from None


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").rstrip().splitlines()
    except OSError:
        return ""
    return "\n".join("    " + ln for ln in text[-lines:])


class _LogPump(threading.Thread):
    """Copies a child's merged stdout/stderr into RUNDIR/log.txt.

    The trainer refuses a non-empty run directory for a new run, so the log file is only
    created once the run directory holds something else (the run has passed that check and
    written its config); until then the output is kept in memory. A run that ends before
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


def run_grid(
    spec: Union[str, Path, dict],
    dry_run: bool = False,
    command: Optional[Callable[[RunSpec, bool], list[str]]] = None,
    max_concurrent: Optional[int] = None,
    out: Union[str, Path, None] = None,
    log: Callable[[str], None] = print,
    poll_s: float = 0.05,
    deadline: Optional[float] = None,
    on_done: Optional[Callable[[RunSpec, float], None]] = None,
) -> GridResult:
    """Expand and run a grid (see the module docstring); returns a ``GridResult`` whose
    ``failures`` counts the failed runs.

    ``command(run, resume) -> argv`` builds each process's command (default
    ``default_command``: ``python -m allnc train ...``); with the default command every
    run's config and overrides are validated before anything starts.

    ``deadline`` (a ``time.monotonic()`` value): runs still going then are stopped and
    listed as ``unfinished`` (their last checkpoint stays, so running the grid again
    resumes them), runs not yet started as ``not_started``; neither is a result.
    ``on_done(run, seconds)`` is called as soon as each run has written its metrics.json."""
    data, base_dir, default_out = load_grid(spec)
    out_dir = Path(out if out is not None else data.get("out") or default_out)
    specs = expand_grid(data, base_dir=base_dir, out_dir=out_dir)
    conc = max_concurrent if max_concurrent is not None else data.get("max_concurrent", 1)
    if not isinstance(conc, int) or isinstance(conc, bool) or conc < 1:
        raise ConfigError(f"grid max_concurrent must be an integer >= 1, got {conc!r}")
    devices = data.get("devices")
    if devices is not None:
        if isinstance(devices, (int, str)):
            devices = [devices]
        if not isinstance(devices, list) or not devices:
            raise ConfigError("grid devices: must be a non-empty list of GPU ids, e.g. [0, 1]")
        devices = [str(d) for d in devices]
        conc = min(conc, len(devices)) if max_concurrent is not None or "max_concurrent" in data else len(devices)
    if command is None:
        _validate_configs(specs)
        command = default_command

    result = GridResult(out_dir=out_dir, runs=specs, dry_run=dry_run)
    todo: list[tuple[RunSpec, bool]] = []
    for s in specs:
        if (s.run_dir / METRICS).is_file():
            result.skipped.append(s)
        else:
            todo.append((s, (s.run_dir / CHECKPOINT).is_file()))
    n = len(specs)
    log(f"grid: {n} runs in {out_dir} ({len(result.skipped)} finished already, {len(todo)} to run, "
        f"{conc} at once)")
    if dry_run:
        for s in specs:
            if s in result.skipped:
                log(f"  skip    {s.name} (has {METRICS})")
        for s, resume in todo:
            what = "resume" if resume else ("restart" if _has_leftovers(s.run_dir) else "run")
            log(f"  {what:7s} {s.name}: {' '.join(command(s, resume))}")
        return result

    out_dir.mkdir(parents=True, exist_ok=True)
    pending = deque(todo)
    free = deque(devices) if devices else None
    running: dict[subprocess.Popen, tuple[RunSpec, float, _LogPump, Optional[str]]] = {}
    started = 0
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
                why = f"exit status {rc}" if rc != 0 else f"exited 0 but wrote no {METRICS}"
                result.failed.append(s)
                result.reasons[s.name] = why
                log(f"  FAILED {s.name}: {why} after {secs:.0f} s; log: {s.run_dir / LOG}")
                tail = _tail(s.run_dir / LOG)
                if tail:
                    log(tail)
            if running:
                time.sleep(poll_s)
    except BaseException:
        _stop(list(running))
        for _, _, pump, _ in running.values():
            pump.join(timeout=5)
        raise

    result.summary = summarize([s.run_dir for s in specs])
    (out_dir / "summary.md").write_text(result.summary)
    log(result.summary)
    if result.unfinished or result.not_started:
        log(f"grid: the deadline stopped {len(result.unfinished)} runs and {len(result.not_started)} did not start")
    if result.failed:
        log(f"grid: {len(result.failed)} of {n} runs failed: " + ", ".join(s.name for s in result.failed))
    elif not (result.unfinished or result.not_started):
        log(f"grid: all {n} runs finished; summary in {out_dir / 'summary.md'}")
    return result


# ---------------------------------------------------------------------------- summary
_COLUMNS = (("top1", ("top1",)), ("many", ("groups", "many")), ("medium", ("groups", "medium")),
            ("few", ("groups", "few")))


def _get(d: Any, path: Sequence[str]) -> Optional[float]:
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    if isinstance(d, bool) or not isinstance(d, (int, float)) or not math.isfinite(d):
        return None
    return float(d)


def _mean_std(vals: list[float]) -> str:
    if not vals:
        return "–"
    m = sum(vals) / len(vals)
    if len(vals) == 1:
        return f"{m:.2f}"
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))
    return f"{m:.2f} ± {sd:.2f}"


def summarize(run_dirs: Sequence[Union[str, Path]]) -> str:
    """A markdown table of top-1 and many/medium/few accuracy (percent) read from each run
    directory's metrics.json; runs whose names differ only by a ``__seed<S>`` suffix form one
    row with mean ± sample standard deviation over the seeds that finished."""
    groups: dict[str, list[Path]] = {}
    for d in run_dirs:
        p = Path(d)
        groups.setdefault(_SEED_RE.sub("", p.name), []).append(p)
    lines = ["| run | seeds | top1 | many | medium | few |", "|---|---|---|---|---|---|"]
    for name, dirs in groups.items():
        metrics = []
        for d in dirs:
            try:
                m = json.loads((d / METRICS).read_text())
            except (OSError, ValueError):
                continue
            if isinstance(m, dict):
                metrics.append(m)
        cells = [_mean_std([v for v in (_get(m, path) for m in metrics) if v is not None]) for _, path in _COLUMNS]
        lines.append(f"| {name} | {len(metrics)}/{len(dirs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"

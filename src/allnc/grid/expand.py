"""Grid expansion: a grid YAML (or dict) becomes one ``RunSpec`` per run and seed.

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
    slurm:                     # only for `--executor slurm|local` (allnc.grid.submit, pip install allnc[submitit])
      partition: gpu           # Slurm partition
      time: 240                # time limit of each job: minutes or D-HH:MM:SS (required on Slurm)
      gpus_per_node: 1         # GPUs of each job (local executor: jobs see GPUs 0..N-1; none when unset)
      cpus_per_task: 8         # CPU cores of each job (also its OMP_NUM_THREADS)
      mem_gb: 32               # memory of each job
      # also: account, qos, constraint, setup (shell lines run before each job),
      # additional (any other sbatch option, e.g. {reservation: r1})

Each run gets the directory ``OUT/<config>__<k=v>__...__seed<S>`` (``OUT/<name>__seed<S>``
when named) and is started as ``python -m allnc train --config C --out RUNDIR k=v ...``
with its stdout and stderr appended to ``RUNDIR/log.txt``. A run whose directory has a
``metrics.json`` is skipped, one with a checkpoint but no ``metrics.json`` is continued
with ``--resume``: running a grid again resumes it (the leftovers of an attempt that died
before its first checkpoint are moved to ``OUT/_attempts/`` and the run starts afresh). A
failed run is reported and the others go on (``allnc.grid.runner``). At the end a table of
top-1 and many/medium/few accuracy (mean ± sample std over seeds; validation top-1 too
where runs have it) is written to ``OUT/summary.md``, ``OUT/summary.csv`` and
``OUT/summary.json`` and printed (``allnc.grid.summary``).

``allnc grid GRID.yaml --executor process`` (the default) runs the processes here;
``--executor slurm`` submits one Slurm job per run through submitit (``--executor local``:
submitit's local executor), with the same skipping, resuming and summaries, the job options
from ``slurm:`` and ``max_concurrent`` as the job array's parallelism (``allnc.grid.submit``).
``devices:`` applies to the process executor only. A data-parallel run inside a job is
started with torchrun, as without a grid (docs/tracking_and_clusters.md).
"""
from __future__ import annotations

import difflib
import hashlib
import itertools
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import yaml

from ..errors import ConfigError

__all__ = ["RunSpec", "expand_grid", "load_grid"]

_KEYS = ("runs", "configs", "overrides", "seeds", "out", "max_concurrent", "extra_overrides", "devices", "slurm")
_RUN_KEYS = ("config", "overrides", "name")
SEED_RE = re.compile(r"__seed-?\d+$")  # the seed suffix of a run name; without it: the run's group


@dataclass
class RunSpec:
    """One process of the grid."""

    name: str  # the run directory's name
    group: str  # the name without the seed suffix: runs of one group differ only by seed
    config: str  # what --config gets (a built-in name or a YAML path)
    overrides: list[str]  # key=value, in order (the run's, then extra_overrides, then seed=S)
    seed: Optional[int]
    run_dir: Path


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
    """A file-name-safe label: other characters become '-'; a '-' they leave at either end goes,
    a minus sign written in the text stays (train.lr=-1 and train.lr=1 are different runs)."""
    text = str(text)
    s = re.sub(r"[^A-Za-z0-9._=+-]+", "-", text)
    if s.startswith("-") and not text.startswith("-"):
        s = s.lstrip("-")
    if s.endswith("-") and not text.endswith("-"):
        s = s.rstrip("-")
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
            specs.append(RunSpec(name, SEED_RE.sub("", name) if s is not None else name,
                                 _resolve_config(cfg, base), overrides, s, out / name))
    return specs


def load_grid(spec_or_path: Union[str, Path, dict]) -> tuple[dict, Optional[Path], str]:
    """(spec, base_dir, default out) of a grid YAML path or an already loaded dict."""
    if isinstance(spec_or_path, dict):
        return dict(spec_or_path), None, "runs/grid"
    path = Path(spec_or_path)
    if not path.is_file():
        raise ConfigError(f"grid file {path} does not exist")
    from ..config import read_yaml_mapping  # here, not at the top: allnc.config may pull in torch

    spec = read_yaml_mapping(path, "grid file", "runs:, configs:, seeds:, out:, ...")
    return spec, path.parent, f"runs/{_safe(path.stem)}"

"""Built-in configs composed from fragments: ``configs/datasets/``, ``configs/methods/`` and
``configs/presets/``.

A built-in name is ``<dataset>[_<method>[_<preset>]]`` (``cifar10_lt``, ``cifar10_lt_allnc``,
``cifar10_lt_allnc_strong``). It resolves to, in order: the dataset fragment (after its own
``_base_``), the method fragment (after its ``_base_`` chain), what the dataset's
``_methods_`` section gives each fragment of that chain (settings a method takes on this
dataset only, such as cRT's epochs), then the preset fragment.

Fragment keys besides config keys: ``_base_`` (a fragment of the same kind, or a list of
them), ``_methods_`` (datasets only), ``_only_`` (the datasets a method or preset makes
built-ins with; default all), ``_presets_: false`` (a method that takes no preset). The first
comment line of a fragment is its description (``allnc config --list``).
"""
from __future__ import annotations

import difflib
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Optional

from .config_io import read_yaml_mapping
from .errors import ConfigError

KINDS = ("datasets", "methods", "presets")
_SPECIAL = ("_base_", "_methods_", "_only_", "_presets_", "_display_")


def _folder(kind: str) -> Path:
    return Path(str(resources.files("allnc") / "configs" / kind))


@lru_cache(maxsize=None)
def fragments(kind: str) -> dict[str, Path]:
    return {p.stem: p for p in sorted(_folder(kind).glob("*.yaml"))}


@lru_cache(maxsize=None)
def _read(kind: str, name: str) -> dict:
    path = fragments(kind).get(name)
    if path is None:
        close = difflib.get_close_matches(name, list(fragments(kind)), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f" (known: {', '.join(fragments(kind))})"
        raise ConfigError(f"no {kind[:-1]} fragment '{name}'{hint}")
    return read_yaml_mapping(path, f"{kind[:-1]} fragment")


def description(kind: str, name: str) -> str:
    for line in fragments(kind)[name].read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def _bases(data: dict) -> list[str]:
    b = data.get("_base_")
    return [] if b is None else ([b] if isinstance(b, str) else list(b))


def _chain(kind: str, name: str, depth: int = 0) -> list[tuple[str, dict]]:
    """(name, fragment) base first, special keys kept."""
    if depth > 20:
        raise ConfigError(f"{kind[:-1]} fragment '{name}': _base_ chain deeper than 20 (a cycle?)")
    data = _read(kind, name)
    out: list[tuple[str, dict]] = []
    for b in _bases(data):
        out.extend(_chain(kind, b, depth + 1))
    return out + [(name, data)]


def _strip(data: dict) -> dict:
    return {k: v for k, v in data.items() if k not in _SPECIAL}


def _allowed(data_chain: list[tuple[str, dict]], dataset: str) -> bool:
    only = data_chain[-1][1].get("_only_")
    return only is None or dataset in only


@lru_cache(maxsize=None)
def builtin_names() -> tuple[str, ...]:
    """Every built-in config: each dataset alone, with each method, and with each preset the
    method and the dataset take."""
    out = []
    for ds in fragments("datasets"):
        out.append(ds)
        for m in fragments("methods"):
            mc = _chain("methods", m)
            if not _allowed(mc, ds):
                continue
            out.append(f"{ds}_{m}")
            if mc[-1][1].get("_presets_", True) is False:
                continue
            for p in fragments("presets"):
                if _allowed(_chain("presets", p), ds):
                    out.append(f"{ds}_{m}_{p}")
    return tuple(sorted(out))


def split_name(name: str) -> Optional[tuple[str, Optional[str], Optional[str]]]:
    """(dataset, method, preset) of a built-in name, or None if it is not one."""
    if name not in set(builtin_names()):
        return None
    ds = max((d for d in fragments("datasets") if name == d or name.startswith(d + "_")), key=len)
    rest = name[len(ds) + 1:]
    if not rest:
        return ds, None, None
    for p in fragments("presets"):
        if rest.endswith("_" + p) and rest[: -len(p) - 1] in fragments("methods"):
            return ds, rest[: -len(p) - 1], p
    return ds, rest, None


def compose(name: str) -> list[tuple[str, dict]]:
    """The (label, mapping) layers of a built-in config, applied in order over the defaults."""
    parts = split_name(name)
    if parts is None:
        raise ConfigError(f"'{name}' is not a built-in config")
    ds, method, preset = parts
    layers: list[tuple[str, dict]] = []
    per_method: dict[str, list[tuple[str, dict]]] = {}
    for d_name, data in _chain("datasets", ds):
        layers.append((f"configs/datasets/{d_name}.yaml", _strip(data)))
        for m, body in (data.get("_methods_") or {}).items():
            per_method.setdefault(m, []).append((f"configs/datasets/{d_name}.yaml _methods_.{m}", body or {}))
    if method:
        for m_name, data in _chain("methods", method):
            layers.append((f"configs/methods/{m_name}.yaml", _strip(data)))
            layers.extend(per_method.get(m_name, []))
    if preset:
        for p_name, data in _chain("presets", preset):
            layers.append((f"configs/presets/{p_name}.yaml", _strip(data)))
    return layers


def display_name(name: str) -> str:
    """The method's display name of a built-in config (``AllNC``, ``BBN``, ``GBBN only``...)."""
    parts = split_name(name)
    if parts is None:
        return ""
    ds, method, preset = parts
    disp = "CE"
    for _, data in _chain("methods", method) if method else []:
        disp = data.get("_display_", disp)
    return disp + (f" ({preset})" if preset else "")


@lru_cache(maxsize=None)
def method_of(name: str) -> str:
    """``method.name`` of a built-in config (``ce``, the default tree's, when no layer sets it)."""
    out = "ce"
    for _, data in compose(name):
        out = (data.get("method") or {}).get("name", out)
    return out


def configs_with_method(name: str, method: str) -> list[str]:
    """The built-in configs of ``name``'s dataset (and preset) whose ``method.name`` is ``method``."""
    parts = split_name(name)
    if parts is None:
        return []
    ds, _, preset = parts
    out = []
    for b in builtin_names():
        bp = split_name(b)
        if bp[0] == ds and bp[1] and bp[2] == preset and method_of(b) == method:
            out.append(b)
    return out


def describe(name: str) -> str:
    """One line: what the built-in config is."""
    parts = split_name(name)
    if parts is None:
        return ""
    ds, method, preset = parts
    if not method:
        return description("datasets", ds)
    text = f"{ds}: {description('methods', method)}"
    return text + (f"; + {description('presets', preset)}" if preset else "")


def suggest(name: str) -> Optional[str]:
    close = difflib.get_close_matches(name, builtin_names(), n=1)
    return close[0] if close else None

"""Config machinery with no knowledge of the tree: YAML 1.2 reading, ``key=value`` parsing,
flattening, and the one way library code reads a possibly-missing config key."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError


class _YAMLLoader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false, so `on`, `off`, `yes`, `no` stay strings
    (train.compile=on, train.amp=off)."""


_YAMLLoader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:bool"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_YAMLLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_YAMLLoader)


def read_yaml_mapping(path: Path, what: str = "config file", expected: str = "keys") -> dict:
    """A YAML file that must hold a mapping; one-line errors name the file (and line)."""
    try:
        data = load_yaml(Path(path).read_text()) or {}
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        at = f" at line {line + 1}" if line is not None else ""
        raise ConfigError(f"{what} {path} is not valid YAML{at}: fix its syntax") from None
    except OSError as e:
        raise ConfigError(f"{what} {path} cannot be read ({e.strerror or e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must hold a mapping of {expected}, not {type(data).__name__}")
    return data


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {'a.b.c': value}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        full = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, full + "."))
        else:
            out[full] = v
    return out


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key=value (for example train.epochs=5)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}' has no key (write key=value)")
    try:
        value = load_yaml(raw) if raw.strip() != "" else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def cfg_get(cfg: Any, key: str, default: Any = None) -> Any:
    """``cfg.a.b`` for the dotted ``key``, or ``default`` where a part is missing or the value
    is None: the one way code that also accepts partial configs (a bare data section, test
    stubs) reads a setting."""
    node = cfg
    for part in key.split("."):
        if isinstance(node, dict):
            node = node.get(part)
        else:
            try:
                node = getattr(node, part)
            except AttributeError:
                return default
        if node is None:
            return default
    return node


def section(cfg: Any, name: str) -> Any:
    """``cfg.<name>`` when ``cfg`` is a whole config, else ``cfg`` itself (already the section)."""
    try:
        return getattr(cfg, name)
    except AttributeError:
        return cfg

"""Your own code beside the package's: modules named by the config key ``plugins``.

A plugin is a Python module (a dotted name on ``sys.path``, ``my_lab.allnc_methods``) or a
``.py`` file. Importing it runs its registrations (``METHODS``, ``BACKBONES``,
``CLASSIFIERS``, ``SOURCES``, ...) before the config tree is built, so its methods, sections,
backbones and data sources are as much part of the tree as the built-in ones. A run records
its plugins in ``config.yaml`` (files by their absolute path), so ``eval``, ``--resume``,
``nc``, ``predict`` and the grid's processes import them again.

This module only imports: it knows nothing of the config (the config module calls it).
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
import traceback
from pathlib import Path
from typing import Iterable, Optional

from .errors import ConfigError
from .registry import undo_on_error


def is_file_plugin(name: str) -> bool:
    """A ``.py`` file (or any path with a separator), as opposed to a dotted module name."""
    return name.endswith(".py") or "/" in name or "\\" in name


def resolve(name: str, relative_to: Optional[Path] = None) -> str:
    """The plugin as a run records it: a module name as given, a file by its absolute path
    (a relative one taken from ``relative_to``, else from the current directory)."""
    name = str(name).strip()
    if not name:
        raise ConfigError("plugins: an empty name; give a module name (my_lab.methods) or a .py file")
    if not is_file_plugin(name):
        return name
    p = Path(name).expanduser()
    if not p.is_absolute():
        p = (relative_to or Path.cwd()) / p
    return str(p.resolve())


def _module_name(path: Path) -> str:
    """A module name for a plugin file: its stem, made unique by its path."""
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]
    stem = "".join(c if c.isalnum() else "_" for c in path.stem)
    return f"allnc_plugin_{stem}_{digest}"


_PACKAGE = str(Path(__file__).resolve().parent)


def _where(e: BaseException) -> str:
    """Where in the user's code it failed: the innermost frame outside this package and
    the import machinery (else the innermost frame)."""
    frames = traceback.extract_tb(e.__traceback__)
    own = [f for f in frames if not f.filename.startswith((_PACKAGE, "<frozen"))]
    f = (own or frames or [None])[-1]
    return f" at {Path(f.filename).name}:{f.lineno}" if f is not None else ""


def import_plugin(name: str) -> None:
    """Import one resolved plugin once (a second call does nothing). Every failure is one
    ConfigError line naming the plugin and the fix, and takes back what the plugin had
    registered before it failed."""
    if is_file_plugin(name):
        path = Path(name)
        modname = _module_name(path)
        if modname in sys.modules:
            return
        if not path.is_file():
            raise ConfigError(f"plugins: no file {path}; give the path of your .py file (or a module name)")
        spec = importlib.util.spec_from_file_location(modname, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[modname] = module  # dataclasses and pickling look modules up by name
        try:
            with undo_on_error():
                spec.loader.exec_module(module)
        except BaseException as e:
            del sys.modules[modname]
            raise ConfigError(f"plugins: {path.name} failed while importing ({type(e).__name__}: {e}{_where(e)}); "
                              "fix the file") from None
        return
    if name in sys.modules:
        return
    try:
        with undo_on_error():
            importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name and (name == e.name or name.startswith(e.name + ".")):
            raise ConfigError(f"plugins: no module named '{name}'; install it, put its folder on PYTHONPATH, "
                              "or give the path of a .py file") from None
        raise ConfigError(f"plugins: '{name}' failed while importing (ModuleNotFoundError: {e}{_where(e)})") from None
    except Exception as e:  # noqa: BLE001 - the user's module: any failure is theirs to fix
        raise ConfigError(f"plugins: '{name}' failed while importing ({type(e).__name__}: {e}{_where(e)}); "
                          "fix the module") from None


def import_plugins(names: Iterable[str]) -> None:
    for name in names:
        import_plugin(name)

"""Name -> factory registries (no string eval anywhere in the package)."""
from __future__ import annotations

import difflib
import weakref
from contextlib import contextmanager
from typing import Callable, ClassVar, Generic, Iterator, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """``@REG.register("name", key=value...)`` records an object under a name, with optional
    metadata (for example the config dataclass a method reads: ``meta(name)``)."""

    #: every registry made, so that a failed plugin's registrations can be undone (``undo_on_error``)
    _made: ClassVar[weakref.WeakSet] = weakref.WeakSet()

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._meta: dict[str, dict] = {}
        Registry._made.add(self)

    def register(self, name: str, **meta) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._items[name] = obj
            self._meta[name] = dict(meta)
            return obj

        return deco

    def meta(self, name: str) -> dict:
        self.get(name)
        return dict(self._meta[name])

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self._items), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(
                f"unknown {self.kind} '{name}'{hint} (known: {', '.join(sorted(self._items))})"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items


@contextmanager
def undo_on_error() -> Iterator[None]:
    """Whatever the block registers, in any registry, is taken back if the block raises: a
    plugin that fails halfway leaves nothing behind, so that importing it again once it is
    fixed does not find its own names "registered twice"."""
    before = [(r, dict(r._items), dict(r._meta)) for r in list(Registry._made)]
    try:
        yield
    except BaseException:
        for r, items, meta in before:
            r._items, r._meta = items, meta
        raise

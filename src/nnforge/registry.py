"""Registries of named things (datasets, steps, optimizers, quantizers, …).

A registry maps a short public name to an object. Lookups of unknown names raise a
:class:`~nnforge.errors.ConfigError` that lists the allowed names and suggests the closest one, so a
typo in a recipe reads "unknown step 'quantise' (did you mean 'quantize'?)".

Registries are filled at import time by ``@registry.register("name")`` and are not thread-safe for
registration; lookups are read-only and safe from any thread.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

from nnforge.errors import ConfigError

__all__ = ["Registry", "import_submodules"]

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of objects of one kind.

    Args:
        kind: what the entries are, used in error messages ("dataset", "step", …).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers ``obj`` under ``name``; registering a name twice is an error."""

        def decorator(obj: T) -> T:
            self.add(name, obj)
            return obj

        return decorator

    def add(self, name: str, obj: T) -> None:
        """Register ``obj`` under ``name``."""
        if name in self._entries and self._entries[name] is not obj:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = obj

    def get(self, name: str, *, where: str = "") -> T:
        """Return the entry called ``name``.

        Raises:
            ConfigError: ``name`` is unknown; the message lists the known names and the closest match.
        """
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ConfigError(self.unknown_message(name, where=where)) from None

    def unknown_message(self, name: object, *, where: str = "") -> str:
        known = sorted(self._entries)
        close = difflib.get_close_matches(str(name), known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        loc = f"{where}: " if where else ""
        return f"{loc}unknown {self.kind} {name!r}{hint}. Known: {', '.join(known) or 'none'}."

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._entries)

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(sorted(self._entries.items()))

    def values(self) -> list[T]:
        """The entries, in the order of their sorted names."""
        return [obj for _, obj in self.items()]

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)


def import_submodules(package: str, path: Iterable[str]) -> None:
    """Import every public module and subpackage of ``package`` (``path`` is its ``__path__``).

    The plug-in point of a folder-per-method package: each method's module registers itself when imported,
    so adding a method is adding a file or folder, with no list to edit. Names starting with ``_`` are
    left to be imported by whoever uses them.
    """
    for info in pkgutil.iter_modules(list(path)):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")

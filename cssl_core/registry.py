"""Name registries the CLI, the API and the worker resolve names through.

A registry is filled where each entry is defined (``@register`` on a method class), and it
finds those definitions itself: on the first lookup it imports every module of its package,
so a new method is one new file and nothing else. The registries sit at the bottom of the
core: they import no method, and :mod:`cssl_core.config` asks them what a name means.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING, Generic, TypeVar

from cssl_core.errors import ConfigError, did_you_mean

if TYPE_CHECKING:
    from cssl_core.methods.base import Method

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries by lower-case ``name``, discovered by importing every module of ``package``."""

    def __init__(self, kind: str, package: str):
        self.kind = kind
        self.package = package
        self._entries: dict[str, T] = {}
        self._discovered = False

    def register(self, entry: T) -> T:
        """Decorator: add a class by its ``name`` attribute; two entries may not share a name."""
        name = entry.name.lower()  # type: ignore[attr-defined]
        known = self._entries.get(name)
        if known is not None and known is not entry:
            raise ValueError(f"{self.kind} name {name!r} is taken by {known.__module__}.{known.__qualname__}")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        """The entry called ``name`` (any case); an unknown name lists the known ones."""
        self._discover()
        try:
            return self._entries[name.lower()]
        except KeyError:
            raise ConfigError(
                f"unknown {self.kind} {name!r}{did_you_mean(name.lower(), self.names())}; "
                f"known {self.kind}s: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        self._discover()
        return sorted(self._entries)

    def _discover(self) -> None:
        # By name, not by an import statement: the package's modules import this one.
        if self._discovered:
            return
        package = importlib.import_module(self.package)
        for module in pkgutil.iter_modules(package.__path__, self.package + "."):
            importlib.import_module(module.name)
        self._discovered = True


METHODS: Registry[type[Method]] = Registry("method", "cssl_core.methods")
register = METHODS.register

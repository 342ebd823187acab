"""The method registry: every name the CLI, the API and the worker accept resolves here."""

from __future__ import annotations

from cssl_core.errors import ConfigError
from cssl_core.methods.base import Method, StepOutput

_REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    _REGISTRY[cls.name] = cls
    return cls


def get_method(name: str) -> type[Method]:
    """The method class for ``name``; an unknown name lists the known ones."""
    try:
        return _REGISTRY[name.lower()]
    except KeyError:
        raise ConfigError(f"unknown method {name!r}; known methods: {', '.join(method_names())}") from None


def method_names() -> list[str]:
    return sorted(_REGISTRY)


# Registering is importing: one line per method.
from cssl_core.methods import simclr, moco, byol, simsiam, barlow_twins  # noqa: E402,F401

__all__ = ["Method", "StepOutput", "get_method", "method_names", "register"]

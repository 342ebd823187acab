"""What several test files share: a method's heads made small enough for a test step on a CPU,
derived from its config's fields, and a cancel callback that stops a run after a number of steps."""

from __future__ import annotations

import dataclasses
from typing import Any

from cssl_core.config import MethodConfig, field_bounds
from cssl_core.methods import get_method

MAX_WIDTH = 32  # a "*_dim" field: a head's width or output dimension
MAX_CROPS = 2  # a "*_crops" field: extra crops per image
MAX_BLOCKS = 1  # a "*_blocks" field: repeated blocks of a network
MAX_COUNT = 16  # any other number of at least 1 (ge=1): queue, bank or prototype rows, noise samples

_COMMON = {f.name for f in dataclasses.fields(MethodConfig)}


def tiny_heads(method: str) -> dict[str, Any]:
    """Overrides that shrink ``method``'s own config fields, as 32-px test images see them (the
    defaults with the small-image recipe), by the rules above; then the config's
    ``tiny_test_values`` where those rules leave a step slow (CPC's patch grid)."""
    config_cls = get_method(method).config_cls
    values = {f.name: f.default for f in dataclasses.fields(config_cls)} | config_cls.small_image_recipe
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config_cls):
        value, kind = values[f.name], str(f.type)
        if f.name in _COMMON or "int" not in kind:
            continue
        if f.name.endswith("_dim"):
            out[f.name] = MAX_WIDTH if value is None else min(value, MAX_WIDTH)
        elif f.name.endswith("_crops"):
            out[f.name] = min(value, MAX_CROPS)
        elif f.name.endswith("_blocks"):
            out[f.name] = min(value, MAX_BLOCKS)
        elif value is not None and getattr(field_bounds(config_cls, f.name), "ge", None) == 1:
            out[f.name] = tuple(min(v, MAX_COUNT) for v in value) if isinstance(value, tuple) else min(value, MAX_COUNT)
    return {key: value for key, value in out.items() if value != values[key]} | config_cls.tiny_test_values


def stop_after(calls: int):
    """A ``should_stop`` callback that says stop on its ``calls``-th call (once per step)."""
    count = {"n": 0}

    def should_stop() -> bool:
        count["n"] += 1
        return count["n"] >= calls

    return should_stop

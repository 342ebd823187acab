"""What several test files share: a method's heads made small enough for a test step on a CPU,
derived from its config's fields, a cancel callback that stops a run after a number of steps, and
a short training run of a memory-bank method on a one-layer backbone."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from cssl_core.config import MethodConfig, field_bounds
from cssl_core.methods import Batch, get_method

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


def linear_backbone(in_features: int, out_features: int = 64) -> nn.Module:
    """A one-layer ReLU network over flattened inputs: a backbone whose step costs next to nothing.
    Its features are non-negative, so they start well aligned, as a new convnet's do."""
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, out_features), nn.ReLU())


def train_on(model: nn.Module, images: torch.Tensor, epochs: int, batch_size: int = 32, lr: float = 0.06) -> None:
    """``epochs`` passes of SGD (momentum 0.9) over ``images`` (N, ...) in index order, each view the
    image plus Gaussian noise of std 0.3 (fixed seeds): a short run of a memory-bank method."""
    g = torch.Generator().manual_seed(1)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    for step in range(epochs * len(images) // batch_size):
        start = step * batch_size % len(images)
        indices = torch.arange(start, start + batch_size)
        view = images[indices] + 0.3 * torch.randn(images[indices].shape, generator=g)
        loss = model(Batch(views=[view], indices=indices, step=step, epoch=0, schedules={})).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def mean_pairwise_cosine(rows: torch.Tensor) -> float:
    """The mean cosine between distinct rows of (N, D) unit rows: near 0 spread out, 1 collapsed."""
    n = len(rows)
    return ((rows @ rows.T).sum().item() - n) / (n * (n - 1))

"""What an evaluation returns: accuracies or a protocol's own payload, with its parameters."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class EvalResult:
    """Accuracies in percent on the dataset's test split, with the protocol's parameters; a
    protocol without an accuracy (an embedding, attention maps) has top1 None and its data in ``extra``."""

    protocol: str
    top1: float | None
    top5: float | None
    parameters: dict[str, Any]
    dataset: str
    num_train: int
    num_test: int
    epoch: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class ProtocolOutput:
    """What a protocol computes; the dispatcher adds its name, parameters, data set and epoch."""

    top1: float | None
    top5: float | None
    num_train: int  # labelled training images the protocol used
    num_test: int
    extra: dict[str, Any] = field(default_factory=dict)  # exactly the protocol's declared keys


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor) -> tuple[float, float | None]:
    """Top-1 and top-5 accuracy in percent of class scores (N, C) against labels (N,); top-5 is
    None with fewer than 5 classes."""
    top1 = (scores.argmax(1) == labels).float().mean().item() * 100
    if scores.shape[1] < 5:
        return top1, None
    top5 = (scores.topk(5, dim=1).indices == labels[:, None]).any(1).float().mean().item() * 100
    return top1, top5

"""What every method shares: a backbone, a loss over augmented views, optional momentum encoders."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from cssl_core.config import MethodConfig


@dataclass
class StepOutput:
    """What one training step of a method returns."""

    loss: torch.Tensor
    # Scalars worth plotting besides the loss (e.g. ``{"pos_sim": 0.8}``); floats, not tensors.
    stats: dict[str, float] = field(default_factory=dict)


class Method(nn.Module):
    """Base class: ``backbone`` maps images (N, 3, H, W) to features (N, feature_dim).

    Subclasses build their heads in ``__init__`` and implement :meth:`forward` over the list
    of views. Momentum (EMA) methods override :meth:`momentum_update`; the training loop
    calls it after each optimiser step with the scheduled momentum.
    """

    name: ClassVar[str]
    paper: ClassVar[str]
    arxiv: ClassVar[str]
    config_cls: ClassVar[type[MethodConfig]]
    uses_momentum_encoder: ClassVar[bool] = False

    def __init__(self, backbone: nn.Module, feature_dim: int, config: MethodConfig):
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.config = config

    def forward(self, views: list[torch.Tensor]) -> StepOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    @torch.no_grad()
    def momentum_update(self, momentum: float) -> None:
        """EMA update of momentum encoders; no-op for methods without one."""

    def parameter_groups(self) -> list[dict]:
        """Optimiser groups. Biases and norm parameters skip weight decay and LARS adaptation."""
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim <= 1 else decay).append(p)
        return [
            {"params": decay, "name": "weights"},
            {"params": no_decay, "name": "biases_and_norms", "weight_decay": 0.0, "lars_exclude": True},
        ]

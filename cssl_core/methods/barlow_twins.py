"""Barlow Twins: redundancy reduction between the embeddings of two views (Zbontar et al., arXiv 2103.03230)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from cssl_core.config import MethodConfig, option
from cssl_core.losses import barlow_twins
from cssl_core.methods.base import Batch, Method, StepOutput
from cssl_core.methods.heads import mlp
from cssl_core.registry import register


@dataclass
class BarlowTwinsConfig(MethodConfig):
    # Sec. 4 / App.: LARS, lr 0.2 x batch/256 (biases and BN 0.0048), weight decay 1.5e-6,
    # 10 warmup epochs, lambda 0.0051, 3-layer projector of 8192 units.
    optimizer: str = "lars"
    base_lr: float = 0.2
    weight_decay: float = 1.5e-6
    warmup_epochs: float = 10.0
    augmentation: str = "byol"
    lambd: float = option(0.0051, "weight of the off-diagonal (redundancy) term", ge=0)
    projector_layers: int = option(3, "projector depth", ge=1)
    projector_dim: int = option(8192, "projector width and output dimension", ge=1)
    bias_lr_ratio: float = option(0.024, "learning-rate ratio of biases and norms (0.0048 / 0.2)", ge=0)

    # Measured here (BENCHMARKS.md): 57.5% kNN in 5 minutes; the 8192-wide projector runs at a
    # tenth of the speed on a CPU.
    small_image_recipe: ClassVar[dict[str, Any]] = {
        "batch_size": 128,
        "crop_min_scale": 0.2,
        "projector_dim": 2048,
        "lars_eta": 0.02,
    }


@register
class BarlowTwins(Method):
    name = "barlow_twins"
    paper = "Barlow Twins: Self-Supervised Learning via Redundancy Reduction (Zbontar et al., 2021)"
    arxiv = "2103.03230"
    config_cls = BarlowTwinsConfig
    distributed = True  # the cross-correlation and its standardisation span the global batch

    def __init__(self, backbone: nn.Module, feature_dim: int, config: BarlowTwinsConfig, num_samples: int):
        super().__init__(backbone, feature_dim, config, num_samples)
        self.projector = mlp(
            feature_dim, config.projector_dim, config.projector_dim, num_layers=config.projector_layers
        )

    def parameter_groups(self) -> list[dict]:
        groups = super().parameter_groups()
        for g in groups:
            if g.get("lars_exclude"):
                g["lr_scale"] = self.config.bias_lr_ratio
        return groups

    def forward(self, batch: Batch) -> StepOutput:
        x1, x2 = batch.views
        n = x1.shape[0]
        z = self.projector(self.backbone(torch.cat([x1, x2])))  # (2N, projector_dim)
        return StepOutput(loss=barlow_twins(z[:n], z[n:], self.config.lambd))

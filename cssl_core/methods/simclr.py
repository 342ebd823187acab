"""SimCLR: a simple framework for contrastive learning (Chen et al., arXiv 2002.05709).

v1 uses a 2-layer projector (Sec. 2.1); v2 (arXiv 2006.10029), with its deeper projector kept
for fine-tuning and its optional memory, is :mod:`cssl_core.methods.simclrv2`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from cssl_core.config import MethodConfig, option
from cssl_core.losses import nt_xent
from cssl_core.methods.base import Batch, Method, StepOutput
from cssl_core.methods.heads import mlp
from cssl_core.registry import register


@dataclass
class SimCLRConfig(MethodConfig):
    # App. B.1: LARS, lr = 0.3 x batch/256, weight decay 1e-6, 10 warmup epochs; T = 0.5 on CIFAR-10 (App. B.9).
    optimizer: str = "lars"
    base_lr: float = 0.3
    weight_decay: float = 1e-6
    warmup_epochs: float = 10.0
    augmentation: str = "simclr"
    temperature: float = option(0.5, "NT-Xent temperature", gt=0)
    projector_layers: int = option(2, "projector depth (3: SimCLR v2)", ge=1)
    projector_hidden_dim: int | None = option(
        None, "projector width; none: the backbone's feature dimension, as in the paper", ge=1
    )
    projector_dim: int = option(128, "projection output dimension", ge=1)

    # Measured here (BENCHMARKS.md, CIFAR-10 in 5 minutes on a CPU): 57.3-57.9% kNN against 47.8%
    # with the paper's values. LARS' eta 0.001 is tuned for batch 4096.
    small_image_recipe: ClassVar[dict[str, Any]] = {
        "batch_size": 128,
        "temperature": 0.2,
        "crop_min_scale": 0.2,
        "lars_eta": 0.05,
    }


@register
class SimCLR(Method):
    name = "simclr"
    paper = "A Simple Framework for Contrastive Learning of Visual Representations (Chen et al., 2020)"
    arxiv = "2002.05709"
    config_cls = SimCLRConfig
    distributed = True  # negatives gathered across ranks (losses/nt_xent.py), BN over the global batch

    def __init__(self, backbone: nn.Module, feature_dim: int, config: SimCLRConfig, num_samples: int):
        super().__init__(backbone, feature_dim, config, num_samples)
        hidden = config.projector_hidden_dim or feature_dim
        self.projector = mlp(feature_dim, hidden, config.projector_dim, num_layers=config.projector_layers)

    def forward(self, batch: Batch) -> StepOutput:
        x1, x2 = batch.views
        n = x1.shape[0]
        # One pass over both views: BN statistics span the 2N images, as in the paper's large batches.
        z = self.projector(self.backbone(torch.cat([x1, x2])))  # (2N, projector_dim)
        loss = nt_xent(z[:n], z[n:], self.config.temperature)
        return StepOutput(loss=loss)

"""SimSiam: Siamese networks without negatives or momentum (Chen & He, arXiv 2011.10566).

``D(p1, stopgrad(z2)) / 2 + D(p2, stopgrad(z1)) / 2`` with D the negative cosine (Alg. 1).

Each view goes through the encoder on its own, as Alg. 1 (``z1, z2 = f(x1), f(x2)``) and the
official ``SimSiam.forward(x1, x2)``: BatchNorm normalises each view with its own batch
statistics (SyncBN: over every rank's share of that view).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from cssl_core.config import MethodConfig, option
from cssl_core.losses import negative_cosine
from cssl_core.methods.base import Batch, Method, StepOutput
from cssl_core.methods.heads import mlp
from cssl_core.registry import register


@dataclass
class SimSiamConfig(MethodConfig):
    # Sec. 4 / App. A: SGD lr 0.05 x batch/256, weight decay 1e-4, momentum 0.9, cosine, no warmup;
    # predictor at a fixed lr (Sec. 4.2). CIFAR (App. D): 2-layer projector of dim 2048.
    optimizer: str = "sgd"
    base_lr: float = 0.05
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.0
    augmentation: str = "simclr"
    projector_layers: int = option(3, "projector depth", ge=1)
    projector_dim: int = option(2048, "projector width and output dimension", ge=1)
    predictor_hidden_dim: int = option(512, "predictor bottleneck width", ge=1)
    fixed_predictor_lr: bool = option(True, "predictor at a constant learning rate (Sec. 4.2)")

    # Measured here (BENCHMARKS.md): the paper's 2-layer CIFAR projector (App. D); lr 0.5 x
    # batch/256 and weight decay 1e-5 (solo-learn's CIFAR values): the 19 epochs that 5 minutes buy
    # reach 51.2% kNN (48.7% at seed 1), against 45.0% at the ImageNet lr 0.05 and decay 1e-4
    # (45.9% at lr 0.1).
    small_image_recipe: ClassVar[dict[str, Any]] = {
        "batch_size": 128,
        "crop_min_scale": 0.2,
        "projector_layers": 2,
        "base_lr": 0.5,
        "weight_decay": 1e-5,
    }


@register
class SimSiam(Method):
    name = "simsiam"
    paper = "Exploring Simple Siamese Representation Learning (Chen & He, 2020)"
    arxiv = "2011.10566"
    config_cls = SimSiamConfig
    distributed = True  # per-sample loss; BN over the global batch (the paper's SyncBN, Sec. 4)

    def __init__(self, backbone: nn.Module, feature_dim: int, config: SimSiamConfig, num_samples: int):
        super().__init__(backbone, feature_dim, config, num_samples)
        # BN on every projector layer, the output BN without affine (Sec. 4, "Projection MLP").
        self.projector = mlp(
            feature_dim,
            config.projector_dim,
            config.projector_dim,
            num_layers=config.projector_layers,
            last_bn=True,
            last_bn_affine=False,
        )
        self.predictor = mlp(config.projector_dim, config.predictor_hidden_dim, config.projector_dim)

    def parameter_groups(self) -> list[dict]:
        groups = super().parameter_groups()
        if self.config.fixed_predictor_lr:
            predictor = {id(p) for p in self.predictor.parameters()}
            for g in groups:
                g["params"] = [p for p in g["params"] if id(p) not in predictor]
            groups.append({"params": list(self.predictor.parameters()), "name": "predictor", "fixed_lr": True})
        return groups

    def forward(self, batch: Batch) -> StepOutput:
        x1, x2 = batch.views
        # One pass per view: each view's BN statistics are its own.
        z1 = self.projector(self.backbone(x1))  # (N, projector_dim)
        z2 = self.projector(self.backbone(x2))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        z1, z2 = z1.detach(), z2.detach()  # stop-gradient on the targets
        loss = 0.5 * negative_cosine(p1, z2) + 0.5 * negative_cosine(p2, z1)
        return StepOutput(
            loss=loss, stats={"z_std": float(torch.nn.functional.normalize(z1.float(), dim=1).std(0).mean())}
        )

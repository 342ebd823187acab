"""MoCo: momentum contrast (He et al., arXiv 1911.05722; v2: Chen et al., arXiv 2003.04297).

A query encoder is trained against keys from a momentum (EMA) copy of itself; negatives come
from a queue of earlier keys (Alg. 1). v2 adds an MLP head, stronger augmentation and blur;
v1 is the linear-head, weak-augmentation variant (``mocov1``).

Shuffling BN (Sec. 3.3) needs several devices; in one process the keys' BN statistics come
from the key batch alone, which the v2 report shows is the leak-prone case only at large
batch per device. On several processes BN spans the global batch (``GlobalBatchNorm``), so
the keys' statistics are those of one process, not shuffled per device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cssl_core import distributed
from cssl_core.config import MethodConfig, option
from cssl_core.losses import info_nce
from cssl_core.methods.base import Batch, Method, StepOutput
from cssl_core.methods.heads import ema_update, enqueue, mlp, momentum_copy
from cssl_core.registry import register
from cssl_core.train.schedules import momentum_schedule


@dataclass
class MoCoV2Config(MethodConfig):
    # v2 report, Sec. 3: SGD lr 0.03 at batch 256, weight decay 1e-4, cosine schedule, T = 0.2, K = 65536, m = 0.999.
    optimizer: str = "sgd"
    base_lr: float = 0.03
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.0
    augmentation: str = "mocov2"
    temperature: float = option(0.2, "InfoNCE temperature", gt=0)
    queue_size: int = option(65536, "number of negative keys kept in the queue", ge=1)
    momentum: float = option(0.999, "EMA momentum of the key encoder", ge=0, le=1)
    momentum_cosine: bool = option(False, "raise the momentum to 1 along a cosine")
    mlp_head: bool = option(True, "2-layer MLP head (v2) instead of a linear one (v1)")
    head_dim: int = option(128, "key/query dimension", ge=1)
    symmetric: bool = option(False, "symmetrised loss: both views act as query and key")

    # Measured here (BENCHMARKS.md): a queue of 65,536 keys outlasts many epochs of a small set, so
    # its keys come from an encoder long gone (4096: 49.4% kNN in 5 minutes); the key encoder at
    # m = 0.999 still averages the last ~1,000 steps, most of a 5-minute run's ~1,250, and m = 0.99
    # (solo-learn's CIFAR value) brings the 16 epochs that 5 minutes buy to 51.3%.
    small_image_recipe: ClassVar[dict[str, Any]] = {
        "batch_size": 128,
        "queue_size": 4096,
        "symmetric": True,
        "momentum": 0.99,
    }


@dataclass
class MoCoV1Config(MoCoV2Config):
    # v1, Sec. 4: linear head, T = 0.07, weak augmentation (no blur), lr 0.03 at batch 256.
    augmentation: str = "mocov1"
    temperature: float = option(0.07, "InfoNCE temperature")
    mlp_head: bool = option(False, "2-layer MLP head (v2) instead of a linear one (v1)")

    # Measured here (BENCHMARKS.md): 51.9% kNN in 5 minutes.
    small_image_recipe: ClassVar[dict[str, Any]] = {"batch_size": 128, "queue_size": 4096}


@register
class MoCoV2(Method):
    name = "mocov2"
    paper = "Improved Baselines with Momentum Contrastive Learning (Chen et al., 2020)"
    arxiv = "2003.04297"
    config_cls = MoCoV2Config
    distributed = True  # every rank's keys join the queue, in the one-process order

    def __init__(self, backbone: nn.Module, feature_dim: int, config: MoCoV2Config, num_samples: int):
        super().__init__(backbone, feature_dim, config, num_samples)
        layers = 2 if config.mlp_head else 1
        self.head = mlp(feature_dim, feature_dim, config.head_dim, num_layers=layers)
        self.encoder_q = nn.Sequential(self.backbone, self.head)
        self.encoder_k = momentum_copy(self.encoder_q)
        self.register_buffer("queue", F.normalize(torch.randn(config.queue_size, config.head_dim), dim=1))  # (K, D)
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def schedules(self, total_steps: int, steps_per_epoch: int) -> dict[str, np.ndarray]:
        return {"momentum": momentum_schedule(self.config.momentum, total_steps, self.config.momentum_cosine)}

    @torch.no_grad()
    def after_step(self, batch: Batch) -> None:
        ema_update(self.encoder_q, self.encoder_k, batch.schedules["momentum"])

    def forward(self, batch: Batch) -> StepOutput:
        x1, x2 = batch.views
        cfg = self.config
        with torch.no_grad():  # no gradient to keys
            k = F.normalize(self.encoder_k(torch.cat([x2, x1]) if cfg.symmetric else x2).float(), dim=1)
        if cfg.symmetric:
            n = x1.shape[0]
            q = self.encoder_q(torch.cat([x1, x2]))
            loss = 0.5 * (
                info_nce(q[:n], k[:n], self.queue, cfg.temperature)
                + info_nce(q[n:], k[n:], self.queue, cfg.temperature)
            )
            enqueue(self.queue, self.queue_ptr, distributed.gather_no_grad(k[:n]))
        else:
            q = self.encoder_q(x1)
            loss = info_nce(q, k, self.queue, cfg.temperature)
            enqueue(self.queue, self.queue_ptr, distributed.gather_no_grad(k))
        return StepOutput(loss=loss)


@register
class MoCoV1(MoCoV2):
    name = "mocov1"
    paper = "Momentum Contrast for Unsupervised Visual Representation Learning (He et al., 2019)"
    arxiv = "1911.05722"
    config_cls = MoCoV1Config

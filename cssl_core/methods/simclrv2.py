"""SimCLR v2: big self-supervised models are strong semi-supervised learners (Chen et al., arXiv 2006.10029).

Pretraining is SimCLR's (arXiv 2002.05709) with two changes (Sec. 2): a deeper, 3-layer
projector whose first layer is kept for fine-tuning (``encoder_for_finetune``), and an optional
MoCo-style memory: a momentum copy of the encoder whose projections are queued as extra
negatives. The semi-supervised protocols that follow pretraining, fine-tuning on a fraction of
the labels and distillation into a student on the unlabelled images, are evaluation protocols
(``cssl_core.evaluation.finetune`` and ``.distill``) and apply to any method's checkpoint.

Departure: the official code puts a BatchNorm on the projector's output; as in our SimCLR v1
the output layer is a plain linear map (the paper does not mention the normalisation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cssl_core import distributed
from cssl_core.config import option
from cssl_core.losses import nt_xent
from cssl_core.methods.base import Batch, StepOutput
from cssl_core.methods.heads import ema_update, enqueue, momentum_copy
from cssl_core.methods.simclr import SimCLR, SimCLRConfig
from cssl_core.registry import register
from cssl_core.train.schedules import momentum_schedule


@dataclass
class SimCLRv2Config(SimCLRConfig):
    # Sec. 2 and App. B: LARS, lr 0.075 x sqrt(batch) = 0.3 x batch/256 at batch 4096 (our linear
    # convention), weight decay 1e-4, T = 0.1, a 3-layer projector as wide as the features.
    base_lr: float = 0.3
    weight_decay: float = 1e-4
    temperature: float = option(0.1, "NT-Xent temperature")
    projector_layers: int = option(3, "projector depth; fine-tuning starts from its first layer", ge=2)
    # The memory (Sec. 2, "we also incorporate the memory mechanism from MoCo"): off by default as in
    # the released code; the paper reports about 1% from it at batch 4096.
    memory_size: int = option(0, "negatives kept from a momentum encoder (MoCo-style memory); 0: none", ge=0)
    memory_momentum: float = option(0.999, "EMA momentum of the memory's encoder (MoCo's value)", ge=0, lt=1)

    # SimCLR's measured small-image recipe (BENCHMARKS.md): the same loss and views at CIFAR size.
    small_image_recipe: ClassVar[dict[str, Any]] = {
        "batch_size": 128,
        "temperature": 0.2,
        "crop_min_scale": 0.2,
        "lars_eta": 0.05,
    }


@register
class SimCLRv2(SimCLR):
    name = "simclrv2"
    paper = "Big Self-Supervised Models are Strong Semi-Supervised Learners (Chen et al., 2020)"
    arxiv = "2006.10029"
    config_cls = SimCLRv2Config

    def __init__(self, backbone: nn.Module, feature_dim: int, config: SimCLRv2Config, num_samples: int):
        super().__init__(backbone, feature_dim, config, num_samples)  # backbone and projector
        if config.memory_size:
            self.memory_encoder = momentum_copy(nn.Sequential(self.backbone, self.projector))
            self.register_buffer("memory", F.normalize(torch.randn(config.memory_size, config.projector_dim), dim=1))
            self.register_buffer("memory_ptr", torch.zeros((), dtype=torch.long))

    def encoder_for_finetune(self) -> nn.Module:
        # Sec. 2: fine-tune "from the first layer of the projection head" (Linear, BN, ReLU).
        return nn.Sequential(self.backbone, self.projector[:3])

    def schedules(self, total_steps: int, steps_per_epoch: int) -> dict[str, np.ndarray]:
        if not self.config.memory_size:
            return {}
        return {"memory_momentum": momentum_schedule(self.config.memory_momentum, total_steps, False)}

    @torch.no_grad()
    def after_step(self, batch: Batch) -> None:
        if self.config.memory_size:
            ema_update(
                nn.Sequential(self.backbone, self.projector), self.memory_encoder, batch.schedules["memory_momentum"]
            )

    def forward(self, batch: Batch) -> StepOutput:
        x1, x2 = batch.views
        n = x1.shape[0]
        z = self.projector(self.backbone(torch.cat([x1, x2])))  # (2N, projector_dim)
        if not self.config.memory_size:
            return StepOutput(loss=nt_xent(z[:n], z[n:], self.config.temperature))
        # The memory holds earlier batches' keys only: this batch's keys join it after the loss.
        loss = nt_xent(z[:n], z[n:], self.config.temperature, memory=self.memory)
        with torch.no_grad():
            keys = F.normalize(self.memory_encoder(torch.cat([x1, x2])).float(), dim=1)  # (2n, D)
            # Every rank's keys, in the one-process order: all first views, then all second views.
            keys = torch.cat([distributed.gather_no_grad(keys[:n]), distributed.gather_no_grad(keys[n:])])
            enqueue(self.memory, self.memory_ptr, keys)
        return StepOutput(loss=loss)

"""Invariant and spreading instance features (Ye et al., arXiv 1904.03436; official code
mangye16/Unsupervised_Embedding_Learning, ``demo_seen.py`` and ``BatchAverage.py``).

Every image is its own class, and its classifier weight is its own feature in the current batch:
no memory bank, no queue (Sec. 3). Each batch holds every image twice, two augmentations; the
backbone and a linear head map both to unit 128-d features. A feature's softmax over the batch's
other features should pick its own augmentation (invariance) and not the other images (spreading);
both halves of the batch play both roles, as in the official ``BatchCriterion``
(:func:`cssl_core.losses.invaspread_loss`).

Differences from the official code: its learning rate steps down (x0.1 at epoch 120, x0.05 at
160, x0.01 at 200 of 300), ours follows the loop's cosine; its weight decay also applies to
biases and BN parameters, ours exempts them as every method here does; its colour jitter comes
before the random grayscale, in our ``mocov1`` preset after it (MoCo v1's order).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from cssl_core.config import MethodConfig, option
from cssl_core.losses import invaspread_loss
from cssl_core.methods.base import Batch, Method, StepOutput
from cssl_core.registry import register


@dataclass
class InvaSpreadConfig(MethodConfig):
    # Sec. 4 and official demo_seen.py (CIFAR-10, the paper's main setup): SGD with momentum 0.9,
    # lr 0.03 at batch 128, i.e. 0.06 per 256 by the linear scaling rule; weight decay 5e-4; no
    # warmup; T = 0.1; 128-d features. Augmentation: crop (0.2, 1), jitter 0.4 x 4, grayscale 0.2,
    # flip: our mocov1 preset.
    optimizer: str = "sgd"
    base_lr: float = 0.06
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.0
    augmentation: str = "mocov1"
    temperature: float = option(0.1, "softmax temperature T over the batch's instance features", gt=0)
    embedding_dim: int = option(128, "dimension of the unit instance features (the linear head's output)", ge=1)

    # Reasoned, not measured: the paper's own setup is CIFAR-10 (demo_seen.py), batch 128 and the
    # values above; only the batch size differs from our 256 default.
    small_image_recipe: ClassVar[dict[str, Any]] = {"batch_size": 128}


@register
class InvaSpread(Method):
    name = "invaspread"
    paper = "Unsupervised Embedding Learning via Invariant and Spreading Instance Feature (Ye et al., 2019)"
    arxiv = "1904.03436"
    config_cls = InvaSpreadConfig
    distributed = True  # every rank's features are instances (losses/invaspread.py), BN over the global batch

    def __init__(self, backbone: nn.Module, feature_dim: int, config: InvaSpreadConfig, num_samples: int):
        super().__init__(backbone, feature_dim, config, num_samples)
        # The official ``linear`` to low_dim; the loss L2-normalises, as the official ``Normalize``.
        self.head = nn.Linear(feature_dim, config.embedding_dim)

    def forward(self, batch: Batch) -> StepOutput:
        x1, x2 = batch.views
        n = x1.shape[0]
        # One pass over the 2N images, as the official torch.cat((inputs1, inputs2)).
        z = self.head(self.backbone(torch.cat([x1, x2])))  # (2N, embedding_dim)
        loss = invaspread_loss(z[:n], z[n:], self.config.temperature)
        return StepOutput(loss=loss)

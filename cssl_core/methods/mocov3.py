"""MoCo v3 (Chen, Xie & He, "An Empirical Study of Training Self-Supervised Vision Transformers",
arXiv 2104.02057, Sec. 3 and Alg. 1).

No queue: the keys of the batch are the negatives. A base encoder (backbone + projector) and a
predictor give queries; a momentum encoder, an EMA copy of the base encoder without the
predictor, gives keys. Both views act as query and key: ``ctr(q1, k2) + ctr(q2, k1)``, each an
InfoNCE over the batch scaled by 2T. The momentum rises from ``momentum`` to 1 along a cosine
(official code's ``--moco-m-cos``).

ViTs as the official ``vits.py``: a fixed 2-D sin-cos position embedding, not learned
(``build_2d_sincos_position_embedding``; ``position_embedding="sincos"``), the patch
projection kept at its random init (Sec. 4.2, "random patch projection"; ``--stop-grad-conv1``),
itself Xavier-uniform on the flattened (3 p^2 -> D) weight, and 12 heads (``vit_small``: embed
384, depth 12, heads 12; ``vit_num_heads``). The rest of ``vits.py``'s initialisation (Xavier
linear layers, CLS token std 1e-6) is not reproduced: the blocks start as DINO's.

Heads as in the official ``moco/builder.py``: for ResNets a 2-layer projector and a predictor
without an output BN (``MoCo_ResNet``); for ViTs a 3-layer projector and a predictor with one
(``MoCo_ViT``). Every output BN is without affine; hidden layers 4096 wide, outputs 256.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from cssl_core.backbones import POSITION_EMBEDDINGS, ViTOptions, build_backbone, vit_names
from cssl_core.config import MethodConfig, option
from cssl_core.errors import ConfigError
from cssl_core.losses import mocov3_loss
from cssl_core.methods.base import Batch, Method, StepOutput
from cssl_core.methods.heads import ema_update, mlp, momentum_copy
from cssl_core.registry import register
from cssl_core.train.schedules import momentum_schedule

if TYPE_CHECKING:
    from cssl_core.config import PretrainConfig


@dataclass
class MoCoV3Config(MethodConfig):
    # ResNet-50, official repo (main_moco.py defaults, CONFIG.md's 100-epoch command): LARS, lr 0.6 x
    # batch/256, weight decay 1e-6, 10 warmup epochs, T 1.0, m 0.99 with --moco-m-cos, crop (0.2, 1);
    # BYOL's asymmetric augmentation (Sec. 4 and main_moco.py).
    optimizer: str = "lars"
    base_lr: float = 0.6
    weight_decay: float = 1e-6
    warmup_epochs: float = 10.0
    augmentation: str = "byol"
    crop_min_scale: float | None = 0.2
    temperature: float = option(
        1.0, "InfoNCE temperature T (the loss is scaled by 2T); 1.0 for ResNets, 0.2 for ViTs", gt=0
    )
    momentum: float = option(0.99, "momentum encoder's EMA momentum at the start", ge=0, le=1)
    momentum_cosine: bool = option(True, "raise the momentum to 1 along a cosine (--moco-m-cos)")
    projector_layers: int = option(2, "projector depth: 2 for ResNets, 3 for ViTs (official code)", ge=1)
    projector_hidden_dim: int = option(4096, "projector width", ge=1)
    projector_dim: int = option(256, "projection (query and key) dimension", ge=1)
    predictor_hidden_dim: int = option(4096, "predictor width", ge=1)
    predictor_last_bn: bool = option(False, "BN without affine on the predictor's output (official ViT heads)")
    vit_num_heads: int | None = option(
        None, "ViTs: attention heads; none: the backbone's own (DeiT's); the official MoCo v3 ViTs have 12", ge=1
    )
    position_embedding: str = option(
        "learned", f"ViTs: position embedding, {' or '.join(POSITION_EMBEDDINGS)} (MoCo v3's fixed 2-D sin-cos)"
    )

    # ViT-S/B (official CONFIG.md): AdamW, lr 1.5e-4 x batch/256, weight decay 0.1, 40 warmup epochs,
    # T 0.2, crop (0.08, 1), --stop-grad-conv1 (the frozen random patch projection), MoCo_ViT's heads;
    # vits.py: fixed 2-D sin-cos position embedding, 12 heads.
    vit_defaults: ClassVar[dict[str, Any]] = {
        "optimizer": "adamw",
        "base_lr": 1.5e-4,
        "weight_decay": 0.1,
        "warmup_epochs": 40.0,
        "temperature": 0.2,
        "crop_min_scale": 0.08,
        "frozen_patch_embed": True,
        "projector_layers": 3,
        "predictor_last_bn": True,
        "vit_num_heads": 12,
        "position_embedding": "sincos",
    }
    # Not yet measured. T 0.2: against 127 in-batch negatives (4095 at the paper's batch 4096) T 1.0
    # leaves the softmax nearly flat; solo-learn's CIFAR MoCo v3 uses 0.2, and 0.2 beat 0.5 for SimCLR
    # here. LARS eta 0.02: a relative step lr * eta of 0.6 * 128/256 * 0.02 = 0.006, near SimCLR's
    # measured best (0.0075). Width 2048: six MLP passes a step outweigh the small convnet.
    # The crop (0.2, 1) is the default already.
    small_image_recipe: ClassVar[dict[str, Any]] = {
        "batch_size": 128,
        "temperature": 0.2,
        "lars_eta": 0.02,
        "projector_hidden_dim": 2048,
        "predictor_hidden_dim": 2048,
    }

    # What a checkpoint written before these keys existed ran with.
    unrecorded_defaults: ClassVar[dict[str, Any]] = {"vit_num_heads": None, "position_embedding": "learned"}

    def validate(self) -> None:
        super().validate()
        if self.position_embedding not in POSITION_EMBEDDINGS:
            raise ConfigError(
                f"position_embedding must be one of {', '.join(POSITION_EMBEDDINGS)}, got {self.position_embedding!r}"
            )


@register
class MoCoV3(Method):
    name = "mocov3"
    paper = "An Empirical Study of Training Self-Supervised Vision Transformers (Chen, Xie & He, 2021)"
    arxiv = "2104.02057"
    config_cls = MoCoV3Config
    distributed = True  # every rank's keys are negatives (losses/mocov3.py), BN over the global batch

    def __init__(self, backbone: nn.Module, feature_dim: int, config: MoCoV3Config, num_samples: int):
        super().__init__(backbone, feature_dim, config, num_samples)
        self.projector = mlp(
            feature_dim,
            config.projector_hidden_dim,
            config.projector_dim,
            num_layers=config.projector_layers,
            last_bn=True,
            last_bn_affine=False,
        )
        self.predictor = mlp(
            config.projector_dim,
            config.predictor_hidden_dim,
            config.projector_dim,
            last_bn=config.predictor_last_bn,
            last_bn_affine=False,
        )
        if not config.predictor_last_bn:  # official _build_mlp: no linear layer has a bias
            self.predictor[-1] = nn.Linear(config.predictor_hidden_dim, config.projector_dim, bias=False)
        self.base_encoder = nn.Sequential(self.backbone, self.projector)
        self.momentum_encoder = momentum_copy(self.base_encoder)  # no predictor: keys are projections

    @classmethod
    def build_backbone(cls, config: PretrainConfig, image_size: int) -> tuple[nn.Module, int]:
        """The configured backbone; a ViT with ``vit_num_heads`` heads and ``position_embedding``."""
        mc = config.method_config
        vit = ViTOptions(mc.vit_num_heads, mc.position_embedding) if config.backbone in vit_names() else None
        return build_backbone(
            config.backbone, image_size, norm=mc.norm, frozen_patch_embed=mc.frozen_patch_embed, vit=vit
        )

    @classmethod
    def check_config(cls, config: PretrainConfig, image_size: int) -> None:
        super().check_config(config, image_size)
        mc = config.method_config
        if config.backbone in vit_names():
            ViTOptions(mc.vit_num_heads, mc.position_embedding).validate(config.backbone)
            return
        vit_only = {
            "frozen_patch_embed": (mc.frozen_patch_embed, False),
            "vit_num_heads": (mc.vit_num_heads, None),
            "position_embedding": (mc.position_embedding, "learned"),
        }
        for key, (value, off) in vit_only.items():
            if value != off:
                raise ConfigError(
                    f"{key} applies to ViT backbones ({', '.join(vit_names())}); "
                    f"set it to {'none' if off is None else str(off).lower()} for {config.backbone!r}"
                )

    def schedules(self, total_steps: int, steps_per_epoch: int) -> dict[str, np.ndarray]:
        return {"momentum": momentum_schedule(self.config.momentum, total_steps, self.config.momentum_cosine)}

    @torch.no_grad()
    def after_step(self, batch: Batch) -> None:
        ema_update(self.base_encoder, self.momentum_encoder, batch.schedules["momentum"])

    def forward(self, batch: Batch) -> StepOutput:
        x1, x2 = batch.views
        # One pass per view, as the official code: each view's BN statistics are its own.
        q1 = self.predictor(self.base_encoder(x1))  # (N, projector_dim)
        q2 = self.predictor(self.base_encoder(x2))
        with torch.no_grad():  # no gradient to keys
            k1 = self.momentum_encoder(x1)  # (N, projector_dim)
            k2 = self.momentum_encoder(x2)
        return StepOutput(loss=mocov3_loss(q1, q2, k1, k2, self.config.temperature))

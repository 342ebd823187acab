"""DINO: self-distillation with no labels (Caron et al., arXiv 2104.14294).

A student (backbone + DINO head) is trained to match, on every other crop, the output of a
teacher on the global crops (Sec. 3.1, Alg. 1). The teacher is an EMA of the student (its
momentum raised from 0.996 to 1 along a cosine), its output centred (a running mean of its own
batch outputs) and sharpened (a low temperature): centring and sharpening together avoid
collapse (Sec. 3.1, 5.3). Multi-crop: 2 global crops, seen by both, and ``local_crops`` small
crops, seen by the student only. The teacher is the network evaluated (Sec. 5.2).
Where the paper is silent the values are the official repository's (``main_dino.py``).

Crop scales as the official code: ``main_dino.py``'s defaults for ViTs, global crops (0.4, 1) and
local crops (0.05, 0.4); its README's ResNet-50 command for convnets, ``--global_crops_scale 0.14
1 --local_crops_scale 0.05 0.14``. A ViT student has stochastic depth (``drop_path_rate``, 0.1
as the official ViT-S; the teacher has none, as ``main_dino.py`` builds it without), and a ViT's
local crops are a whole number of patches (96 px in patches of 16 at 224 px; 12 px in patches of
4 at 32 px, the 3 x 3 grid of the even 14 px a convnet gets).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cssl_core import distributed
from cssl_core.augment import ViewSpec, local_views
from cssl_core.backbones import ViTOptions, build_backbone, disable_drop_path, vit_names, vit_patch_size
from cssl_core.config import MethodConfig, option
from cssl_core.errors import ConfigError
from cssl_core.losses import dino_loss
from cssl_core.methods.base import Batch, Method, StepOutput
from cssl_core.methods.heads import momentum_copy
from cssl_core.registry import register
from cssl_core.train.schedules import momentum_schedule

if TYPE_CHECKING:
    from cssl_core.config import PretrainConfig

# The teacher-temperature warm-up takes at most this share of a run: 30 epochs are 30% of the
# official 100-epoch run, so a short or time-budgeted run still ends at ``teacher_temp``.
TEACHER_TEMP_WARMUP_SHARE = 0.3

# AdamW with a cosine weight decay (Sec. 3.2): the paper's ViT optimiser; main_dino.py's crop
# scales for ViTs, and local crops of whole patches.
_VIT_DEFAULTS: dict[str, Any] = {
    "optimizer": "adamw",
    "base_lr": 0.0005,
    "weight_decay": 0.04,
    "weight_decay_end": 0.4,
    "crop_min_scale": 0.4,
    "local_crop_scale": (0.05, 0.4),
    "local_crops_in_patches": True,
}


@dataclass
class DINOConfig(MethodConfig):
    # Sec. 3.2: AdamW, lr 0.0005 x batch/256 after a 10-epoch linear warmup, then cosine; weight
    # decay 0.04 -> 0.4 along a cosine. Official main_dino.py: gradient clip 3.0, BYOL's
    # asymmetric pair (blur 1.0 / blur 0.1 + solarisation 0.2) for the global crops. Crops: the
    # official README's ResNet-50 command (global 0.14-1, local 0.05-0.14); ViTs get main_dino.py's
    # defaults (global 0.4-1, local 0.05-0.4) from vit_defaults.
    optimizer: str = "adamw"
    base_lr: float = 0.0005
    weight_decay: float = 0.04
    weight_decay_end: float | None = 0.4
    warmup_epochs: float = 10.0
    grad_clip: float | None = 3.0
    augmentation: str = "byol"
    crop_min_scale: float | None = 0.14
    out_dim: int = option(65536, "DINO head output dimension K (prototypes)", ge=1)
    hidden_dim: int = option(2048, "hidden width of the DINO head's MLP", ge=1)
    bottleneck_dim: int = option(256, "DINO head bottleneck, L2-normalised before the last layer", ge=1)
    head_layers: int = option(3, "linear layers in the DINO head's MLP (GELU between them)", ge=1)
    norm_last_layer: bool = option(
        True, "fix the norm of each row of the head's last layer to 1 (more stable; the paper's ViT-S runs use false)"
    )
    freeze_last_layer: int = option(
        1,
        "planned epochs during which the head's last layer gets no update (the same share of a time-budgeted run)",
        ge=0,
    )
    local_crops: int = option(
        8, "local crops per image, seen by the student only (0: the two global crops alone)", ge=0
    )
    local_crop_scale: tuple[float, float] = option(
        (0.05, 0.14), "area range of the local crops (min,max); ViTs: (0.05, 0.4)", gt=0, le=1
    )
    local_crops_in_patches: bool = option(
        False,
        "round the local crops' side to a multiple of the ViT patch (vit_patch_size), a whole patch grid; "
        "on for ViTs, which refuse local crops of partial patches",
    )
    drop_path_rate: float = option(
        0.1, "ViTs: the student's stochastic depth at its last block (the teacher has none)", ge=0, lt=1
    )
    student_temp: float = option(0.1, "student softmax temperature", gt=0)
    teacher_temp: float = option(0.07, "teacher softmax temperature after its warm-up", gt=0)
    warmup_teacher_temp: float = option(0.04, "teacher softmax temperature at the start of its linear warm-up", gt=0)
    warmup_teacher_temp_epochs: int = option(
        30, f"teacher-temperature warm-up, in epochs (at most {TEACHER_TEMP_WARMUP_SHARE:.0%} of the run)", ge=0
    )
    center_momentum: float = option(0.9, "momentum of the centre, a running mean of the teacher's outputs", ge=0, le=1)
    momentum_teacher: float = option(0.996, "teacher EMA momentum at the start, raised to 1 along a cosine", ge=0, le=1)

    # ViTs keep the paper's AdamW whatever the image size (the small-image recipe's SGD is the
    # official convnet optimiser).
    vit_defaults: ClassVar[dict[str, Any]] = _VIT_DEFAULTS
    # For a 5-minute CPU run on 32 px images (about 1,000 steps of 128):
    # - out_dim 4096: 65,536 prototypes are for ImageNet's 1.28M images; the 256 x 65,536 last
    #   layer would cost more than the small convnet itself (4096: solo-learn's CIFAR value);
    # - local_crops 0, the two global crops alone (as SwAV's small-image recipe and solo-learn's
    #   CIFAR DINO): measured on the small convnet (BENCHMARKS.md), four 14 px local crops give
    #   42.5% kNN in 5 minutes and none 44.9-45.2% in four runs (SGD lr 0.03 or 0.1, LARS lr 0.3,
    #   norm_last_layer off); a 14 px crop of a 32 px image plausibly holds too little of the
    #   object (not measured). A ViT on small images gets none too (not measured there);
    #   `local_crops 4` brings the multi-crop back;
    # - teacher_temp 0.04 throughout: the official code's default; the warm-up to 0.07 belongs
    #   to its 300-epoch runs;
    # - momentum_teacher 0.99: the teacher is what is evaluated, and the EMA weight of its random
    #   init after K steps is about exp(-(1 - m) K / 2): 13% after 1,000 steps at 0.996,
    #   0.7% at 0.99;
    # - SGD, lr 0.03 x batch/256, constant weight decay 1e-4: the official ResNet-50 settings
    #   (README), for the convnet; a ViT keeps AdamW (vit_defaults).
    # The crop scales are the official ones (ResNet's for the convnet, ViT's for a ViT), not tuned.
    small_image_recipe: ClassVar[dict[str, Any]] = {
        "batch_size": 128,
        "out_dim": 4096,
        "local_crops": 0,
        "teacher_temp": 0.04,
        "warmup_teacher_temp": 0.04,
        "warmup_teacher_temp_epochs": 0,
        "momentum_teacher": 0.99,
        "optimizer": "sgd",
        "base_lr": 0.03,
        "weight_decay": 1e-4,
        "weight_decay_end": None,
    }

    # A checkpoint from before drop_path_rate existed trained its student without it.
    unrecorded_defaults: ClassVar[dict[str, Any]] = {"drop_path_rate": 0.0}

    def validate(self) -> None:
        super().validate()
        if len(self.local_crop_scale) != 2:
            raise ConfigError(f"local_crop_scale must be two numbers (min,max), got {self.local_crop_scale}")


class WeightNormLinear(nn.Module):
    """(N, in_dim) -> (N, out_dim), no bias: ``x @ W^T`` with each row ``W_k = g_k v_k / ||v_k||``
    (weight normalisation, Salimans & Kingma, arXiv 1602.07868).

    Written out rather than through a parametrisation so that it deep-copies, round-trips a
    ``state_dict`` and passes ``convert_to_gn_ws`` as a plain module; the parameter names
    ``weight_g`` (out_dim, 1) and ``weight_v`` (out_dim, in_dim) are those of
    ``torch.nn.utils.weight_norm``, which the official head uses. ``fix_norm``: g stays 1.
    """

    def __init__(self, in_dim: int, out_dim: int, fix_norm: bool):
        super().__init__()
        self.weight_v = nn.Parameter(torch.empty(out_dim, in_dim))
        nn.init.kaiming_uniform_(self.weight_v, a=math.sqrt(5))  # nn.Linear's init, as the official head's
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1), requires_grad=not fix_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight_g * self.weight_v / self.weight_v.norm(dim=1, keepdim=True)
        return F.linear(x, weight)


class DINOHead(nn.Module):
    """(N, in_dim) -> (N, out_dim): an MLP (``layers`` linear layers, GELU between, no BN) to
    ``bottleneck_dim``, L2 normalisation, then a weight-normalised linear layer (Sec. 3.1,
    "Network architecture"; official ``DINOHead`` with ``use_bn=False``)."""

    def __init__(
        self, in_dim: int, out_dim: int, hidden_dim: int, bottleneck_dim: int, layers: int, norm_last_layer: bool
    ):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (layers - 1) + [bottleneck_dim]
        blocks: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            blocks.append(nn.Linear(a, b))
            if i < layers - 1:
                blocks.append(nn.GELU())
        self.mlp = nn.Sequential(*blocks)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, fix_norm=norm_last_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


def teacher_temp_schedule(start: float, end: float, warmup_steps: int, total_steps: int) -> np.ndarray:
    """(total_steps,): linear from ``start`` to ``end`` over ``warmup_steps``, then ``end``.

    Per step where the official code steps once per epoch, so that a run of few epochs warms up smoothly.
    """
    warmup_steps = min(warmup_steps, total_steps)
    return np.concatenate([np.linspace(start, end, warmup_steps), np.full(total_steps - warmup_steps, end)])


@register
class DINO(Method):
    name = "dino"
    paper = "Emerging Properties in Self-Supervised Vision Transformers (Caron et al., 2021)"
    arxiv = "2104.14294"
    config_cls = DINOConfig
    distributed = True  # the centre follows the global batch's teacher mean
    max_views = None
    global_crops = 2

    def __init__(self, backbone: nn.Module, feature_dim: int, config: DINOConfig, num_samples: int):
        super().__init__(backbone, feature_dim, config, num_samples)
        self.head = DINOHead(
            feature_dim,
            config.out_dim,
            config.hidden_dim,
            config.bottleneck_dim,
            config.head_layers,
            config.norm_last_layer,
        )
        self.student = nn.Sequential(self.backbone, self.head)
        self.teacher = momentum_copy(self.student)
        disable_drop_path(self.teacher)  # official: the teacher ViT is built without drop path
        self.register_buffer("center", torch.zeros(1, config.out_dim))  # (1, K), Eq. 4
        # The teacher's batch mean from this step's forward, for after_step; none between steps.
        self._teacher_mean: torch.Tensor | None = None

    @classmethod
    def build_backbone(cls, config: PretrainConfig, image_size: int) -> tuple[nn.Module, int]:
        """The configured backbone; a ViT with the student's stochastic depth (``drop_path_rate``)."""
        mc = config.method_config
        vit = ViTOptions(drop_path_rate=mc.drop_path_rate) if config.backbone in vit_names() else None
        return build_backbone(
            config.backbone, image_size, norm=mc.norm, frozen_patch_embed=mc.frozen_patch_embed, vit=vit
        )

    @classmethod
    def check_config(cls, config: PretrainConfig, image_size: int) -> None:
        super().check_config(config, image_size)
        mc = config.method_config
        if config.backbone in vit_names() and mc.local_crops:
            patch, size = vit_patch_size(image_size), cls.view_specs(mc, image_size)[-1].size
            if size % patch:
                raise ConfigError(
                    f"{config.backbone}'s local crops of {size} px are not a whole number of its {patch} px "
                    "patches; set local_crops_in_patches to true"
                )

    @classmethod
    def view_specs(cls, config: DINOConfig, image_size: int) -> list[ViewSpec]:
        """The preset's two global crops, then ``local_crops`` local crops (Sec. 3.1, multi-crop).

        The local crops take the globals' flip-and-colour pipeline and blur with p = 0.5, as
        the official ``DataAugmentationDINO`` (local_views gives the blur); with
        ``local_crops_in_patches`` their side is a multiple of the ViT patch.
        """
        multiple = vit_patch_size(image_size) if config.local_crops_in_patches else 2
        global_crops = cls.preset_specs(config, image_size)
        g = global_crops[0]
        local_crops = [
            dataclasses.replace(
                spec,
                brightness=g.brightness,
                contrast=g.contrast,
                saturation=g.saturation,
                hue=g.hue,
                jitter_p=g.jitter_p,
                grayscale_p=g.grayscale_p,
            )
            for spec in local_views(image_size, config.local_crops, tuple(config.local_crop_scale), multiple)
        ]
        return global_crops + local_crops

    def schedules(self, total_steps: int, steps_per_epoch: int) -> dict[str, np.ndarray]:
        c = self.config
        warmup = min(c.warmup_teacher_temp_epochs * steps_per_epoch, int(TEACHER_TEMP_WARMUP_SHARE * total_steps))
        return {
            "momentum": momentum_schedule(c.momentum_teacher, total_steps, cosine=True),
            "teacher_temp": teacher_temp_schedule(c.warmup_teacher_temp, c.teacher_temp, warmup, total_steps),
        }

    def forward(self, batch: Batch) -> StepOutput:
        n = batch.views[0].shape[0]
        global_crops, local_crops = torch.cat(batch.views[:2]), batch.views[2:]
        with torch.no_grad():
            teacher_out = self.teacher(global_crops)  # (2N, K): the teacher sees the global crops only
        # One backbone pass per resolution (official MultiCropWrapper), one head pass over all.
        features = [self.backbone(global_crops)]
        if local_crops:
            features.append(self.backbone(torch.cat(local_crops)))
        student_out = self.head(torch.cat(features))  # ((2 + local_crops) N, K), the global crops first
        teacher_temp = batch.schedules["teacher_temp"]
        loss = dino_loss(
            list(student_out.split(n)), list(teacher_out.split(n)), self.center, self.config.student_temp, teacher_temp
        )
        # (1, K) over the global batch: the mean of equal shards' means (official: all-reduced).
        self._teacher_mean = distributed.mean_over_ranks(teacher_out.float().mean(dim=0, keepdim=True))
        return StepOutput(loss=loss, stats={"teacher_temp": teacher_temp})

    @torch.no_grad()
    def after_step(self, batch: Batch) -> None:
        # EMA of the parameters only (Sec. 3.1): the teacher's BatchNorm statistics, if any, come
        # from its own forward passes, as official, so the evaluated teacher is normalised by
        # statistics of its own weights rather than the student's.
        teacher_params = list(self.teacher.parameters())
        student_params = [p.detach() for p in self.student.parameters()]
        torch._foreach_lerp_(teacher_params, student_params, 1.0 - batch.schedules["momentum"])
        if self._teacher_mean is not None:
            # Eq. 4: c <- m c + (1 - m) mean of the teacher's outputs on this batch's global crops.
            self.center.lerp_(self._teacher_mean.to(self.center.dtype), 1.0 - self.config.center_momentum)
            self._teacher_mean = None

    def frozen_parameters(self) -> list[tuple[list[nn.Parameter], float]]:
        # Official: no update of the last layer in the first epoch(s); "helps training".
        last_layer = [p for p in self.head.last_layer.parameters() if p.requires_grad]
        return [(last_layer, self.config.freeze_last_layer)] if self.config.freeze_last_layer else []

    def encoder_for_eval(self) -> nn.Module:
        return self.teacher[0]  # the teacher's backbone: it outperforms the student (Sec. 5.2, Fig. 6)

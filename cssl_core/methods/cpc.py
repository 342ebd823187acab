"""CPC: contrastive predictive coding on a grid of image patches (van den Oord et al., arXiv
1807.03748, Sec. 3.2; v2: Hénaff et al., arXiv 1905.09272, Sec. 4.1 and the appendix's pseudo-code).

One augmented view per image is cut into a G x G grid of overlapping square patches (v1: 64-px
patches at stride 32 from 256-px images, 7 x 7; by default here a quarter of the side at half a
patch's stride, 7 x 7 at any side divisible by 8: 8 px at stride 4 from 32 px). Every patch is
augmented on its own and encoded by the backbone, built for the patch size with layer norm in
place of batch norm (v2, Sec. 4.1: batch statistics let a patch's features see other patches,
which the task must not), into a grid z (N, D, G, G).

A context network of masked convolutions (the pseudo-code's ``pixelCNN``) reads the grid so that
the context at row i sees rows <= i only. For each offset k a 1x1 convolution of the context
predicts a projection of z at row i + k, scored by InfoNCE against every patch of the batch
(:func:`cssl_core.losses.cpc_loss`). v2 repeats this from below, from the left and from the right
with separate context networks (``directions``); the losses are summed, as the pseudo-code sums
its offsets. Evaluation features are the patch features averaged over the grid. ``cssl export``
writes that evaluation encoder's state (:class:`PatchPooledEncoder`: the patch encoder under
``backbone.*``, with layer norm, sized for the patch, not the image): a torchvision ResNet does not
load it; build ``PatchPooledEncoder`` around the same backbone to use it.

Patch augmentation (v2, Sec. 4.1): each patch gets a random square sub-crop resized back (v1's
spatial jitter, 60 of 64 px) and colour dropping (v2: two of the three channels dropped, here set
to the data mean, 0 after normalisation). Left out: v2's AutoAugment primitives (shear, rotation,
...), elastic deformations and per-patch colour transforms, which on patches of a few pixels are
mostly interpolation blur. The draws come from torch's global CPU generator, which the loop
checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from cssl_core import distributed
from cssl_core.augment import ViewSpec, ops
from cssl_core.backbones import build_backbone
from cssl_core.backbones.norm import convert_to_layer_norm
from cssl_core.config import MethodConfig, option
from cssl_core.errors import ConfigError
from cssl_core.losses import cpc_loss
from cssl_core.methods.base import Batch, Method, StepOutput
from cssl_core.registry import register

if TYPE_CHECKING:
    from cssl_core.config import PretrainConfig

DIRECTIONS = ("top-down", "bottom-up", "left-right", "right-left")
# Patch pixels per backbone pass in evaluation: 668 CIFAR images (8-px patches) or 13 images of 224 px.
_EVAL_PIXELS_PER_PASS = 2**21


@dataclass
class CPCConfig(MethodConfig):
    # v2 trains with Adam at lr 4e-4 and no weight decay (here AdamW with weight_decay 0; v2's
    # batch size could not be checked here, so 4e-4 is taken per 256 images). Warmup: the default.
    optimizer: str = "adamw"
    base_lr: float = 4e-4
    weight_decay: float = 0.0
    # The image-level view: crop, flip, colour jitter, grayscale. v1 crops 256 px out of 300 px
    # images (73% of the area); the colour work v2 leaves to each patch.
    augmentation: str = "mocov2"
    crop_min_scale: float | None = 0.7
    patch_size: int | None = option(
        None, "patch side in pixels; none: a quarter of the image side (v1: 64 of 256)", ge=1
    )
    patch_stride: int | None = option(
        None, "pixels between neighbouring patches; none: half the patch size (v1: 32)", ge=1
    )
    min_offset: int = option(1, "nearest row predicted, k rows below the context (v2's pseudo-code: 3)", ge=1)
    max_offset: int = option(5, "farthest row predicted (v1: up to five rows of a 7 x 7 grid)", ge=1)
    directions: int = option(
        4,
        "context directions: 1 top-down (v1), 2 + bottom-up, 3 + left-to-right, 4 + right-to-left (v2)",
        ge=1,
        le=len(DIRECTIONS),
    )
    context_blocks: int = option(5, "residual blocks of the masked context network (v2's pixelCNN)", ge=0)
    context_dim: int = option(256, "hidden channels of the context network's blocks", ge=1)
    target_dim: int = option(64, "dimension of the projected patch features that predictions are scored against", ge=1)
    prediction_scale: float = option(
        0.1, "predictions are scaled by this before the inner products (v2's emb_scale)", gt=0
    )
    patch_crop_scale: float = option(
        0.88, "smallest area of each patch's random square sub-crop (v1: 60 of 64 px); 1: none", gt=0, le=1
    )
    color_drop_p: float = option(
        1.0, "probability that a patch keeps one random colour channel and drops the others (v2)", ge=0, le=1
    )

    # The derived 8-px patches at stride 4 give 32-px images v1's 7 x 7 grid. Measured (BENCHMARKS.md,
    # CIFAR-10 in 5 minutes): batch 32 and two directions train 3.5x the images of batch 128 and four
    # (the logits grow with the square of the batch's patches) for 35.8% kNN against 34.9%.
    small_image_recipe: ClassVar[dict[str, Any]] = {"batch_size": 32, "directions": 2}
    # A 3 x 3 grid of 16-px patches instead of the default 7 x 7 of 8 px: a test step in 60% of the time.
    tiny_test_values: ClassVar[dict[str, Any]] = {"patch_size": 16, "patch_stride": 8, "max_offset": 2}

    def validate(self) -> None:
        super().validate()
        if self.norm != "bn":
            raise ConfigError(
                "cpc always uses layer norm (CPC v2); norm=gn_ws would also standardise the context "
                "and prediction convolutions, so leave norm at its default"
            )
        if self.min_offset > self.max_offset:
            raise ConfigError(f"min_offset must be at most max_offset, got {self.min_offset} and {self.max_offset}")

    def offsets(self) -> range:
        return range(self.min_offset, self.max_offset + 1)


def patch_grid(config: CPCConfig, image_size: int) -> tuple[int, int, int]:
    """(patch side, stride, grid rows) for square images of side ``image_size``."""
    patch = config.patch_size or max(1, image_size // 4)
    stride = config.patch_stride or max(1, patch // 2)
    return patch, stride, (image_size - patch) // stride + 1


def patchify(images: torch.Tensor, patch: int, stride: int) -> torch.Tensor:
    """(N, C, S, S) -> (N * G * G, C, patch, patch), row-major over the grid of each image."""
    grid = images.unfold(2, patch, stride).unfold(3, patch, stride)  # (N, C, G, G, patch, patch)
    return grid.permute(0, 2, 3, 1, 4, 5).reshape(-1, images.shape[1], patch, patch)


def augment_patches(patches: torch.Tensor, crop_scale: float, color_drop_p: float) -> torch.Tensor:
    """(M, 3, p, p) normalised patches -> the same, each with its own random square sub-crop
    resized back to p and, with probability ``color_drop_p``, one random channel kept and the
    other two set to 0. Draws from the global CPU generator. On several processes the patches
    are this rank's share of the global batch's: every rank draws for all of them (its generator
    stays in step with the others') and takes its rows, so a patch's draws do not depend on the rank."""
    generator = torch.default_generator  # restored by the loop on resume: exact resume holds
    m, _, p, _ = patches.shape
    total, rank = m * distributed.world_size(), distributed.rank()
    rows = slice(rank * m, (rank + 1) * m)
    if crop_scale < 1:
        crop = ops.sample_crop_params(total, (p, p), (crop_scale, 1.0), (1.0, 1.0), generator)
        crop = ops.CropParams(crop.top[rows], crop.left[rows], crop.height[rows], crop.width[rows])
        patches = ops.resized_crop(patches, crop, p)
    if color_drop_p > 0:
        keep = torch.randint(3, (total,), generator=generator)[rows]
        dropped = ops.sample_mask(total, color_drop_p, generator)[rows]
        channels = F.one_hot(keep, 3).bool() | ~dropped[:, None]  # (M, 3): the channels left
        patches = patches * channels.to(patches.device, patches.dtype)[:, :, None, None]
    return patches


def context_block(dim: int, hidden: int) -> nn.Sequential:
    """One residual branch of v2's ``pixelCNN``: (N, dim, G, G) -> same; row i of the output
    depends on rows i - 1 and i of the input only."""
    return nn.Sequential(
        nn.Conv2d(dim, hidden, 1),
        nn.ReLU(),
        nn.Conv2d(hidden, hidden, (1, 3), padding=(0, 1)),  # along the row: any column
        nn.ZeroPad2d((0, 0, 1, 0)),
        nn.Conv2d(hidden, hidden, (2, 1)),  # rows i - 1 and i: the mask
        nn.ReLU(),
        nn.Conv2d(hidden, dim, 1),
    )


class ContextNetwork(nn.Module):
    """(N, D, G, G) -> (N, D, G, G): the context at row i is a function of rows <= i."""

    def __init__(self, dim: int, hidden: int, blocks: int):
        super().__init__()
        self.blocks = nn.ModuleList(context_block(dim, hidden) for _ in range(blocks))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            z = z + block(z)
        return F.relu(z)


class DirectionalCPC(nn.Module):
    """One direction's context network, target projection and one prediction per offset."""

    def __init__(self, dim: int, config: CPCConfig):
        super().__init__()
        self.context = ContextNetwork(dim, config.context_dim, config.context_blocks)
        self.target = nn.Conv2d(dim, config.target_dim, 1)
        self.predictors = nn.ModuleList(nn.Conv2d(dim, config.target_dim, 1) for _ in config.offsets())


def orient(z: torch.Tensor, direction: int) -> torch.Tensor:
    """(N, D, G, G) turned so that ``DIRECTIONS[direction]`` reads it from the top row down."""
    if direction >= 2:
        z = z.transpose(2, 3)  # columns become rows
    return z.flip(2) if direction % 2 else z


class PatchPooledEncoder(nn.Module):
    """Images (N, 3, S, S) -> (N, D): the backbone's features of the grid's patches, averaged."""

    def __init__(self, backbone: nn.Module, config: CPCConfig):
        super().__init__()
        self.backbone = backbone
        self.config = config

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        patch, stride, grid = patch_grid(self.config, images.shape[-1])
        per_pass = max(1, _EVAL_PIXELS_PER_PASS // (grid * grid * patch * patch))
        return torch.cat(
            [
                self.backbone(patchify(x, patch, stride)).reshape(len(x), grid * grid, -1).mean(dim=1)
                for x in images.split(per_pass)
            ]
        )


@register
class CPC(Method):
    name = "cpc"
    paper = "Data-Efficient Image Recognition with Contrastive Predictive Coding (Hénaff et al., 2019)"
    arxiv = "1905.09272"
    config_cls = CPCConfig
    min_views = 1
    max_views = 1
    distributed = True  # every rank's patches are negatives (losses/cpc.py); layer norm only, per patch

    def __init__(self, backbone: nn.Module, feature_dim: int, config: CPCConfig, num_samples: int):
        super().__init__(backbone, feature_dim, config, num_samples)
        self.heads = nn.ModuleList(DirectionalCPC(feature_dim, config) for _ in range(config.directions))

    @classmethod
    def build_backbone(cls, config: PretrainConfig, image_size: int) -> tuple[nn.Module, int]:
        """The configured backbone built for the patch size, with layer norm for batch norm."""
        mc = config.method_config
        patch, _, _ = patch_grid(mc, image_size)
        backbone, feature_dim = build_backbone(config.backbone, patch, frozen_patch_embed=mc.frozen_patch_embed)
        return convert_to_layer_norm(backbone), feature_dim

    @classmethod
    def view_specs(cls, config: CPCConfig, image_size: int) -> list[ViewSpec]:
        return cls.preset_specs(config, image_size)[:1]  # one view per image: the patches are the views

    @classmethod
    def check_config(cls, config: PretrainConfig, image_size: int) -> None:
        patch, stride, grid = patch_grid(config.method_config, image_size)
        if patch > image_size:
            raise ConfigError(f"patch_size {patch} is larger than the images ({image_size} px)")
        if grid <= config.method_config.max_offset:
            raise ConfigError(
                f"max_offset {config.method_config.max_offset} needs a grid of more rows than the "
                f"{grid} that {patch}-px patches at stride {stride} make of {image_size}-px images"
            )
        super().check_config(config, image_size)

    def grid_features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) -> z (N, D, G, G), each patch augmented and encoded on its own."""
        patch, stride, grid = patch_grid(self.config, images.shape[-1])
        patches = augment_patches(
            patchify(images, patch, stride), self.config.patch_crop_scale, self.config.color_drop_p
        )
        z = self.backbone(patches).reshape(len(images), grid, grid, -1)
        return z.permute(0, 3, 1, 2)

    def forward(self, batch: Batch) -> StepOutput:
        (view,) = batch.views
        return StepOutput(loss=self.grid_loss(self.grid_features(view)))

    def grid_loss(self, z: torch.Tensor) -> torch.Tensor:
        """z (N, D, G, G) -> the InfoNCE losses of every direction and offset, summed."""
        losses, first = [], distributed.rank() * len(z)
        for direction, head in enumerate(self.heads):
            grid = orient(z, direction)
            context = head.context(grid)
            # Every rank's targets, with gradients: the negatives are the global batch's patches.
            targets = distributed.gather(head.target(grid).permute(0, 2, 3, 1))  # (world * N, G, G, target_dim)
            for offset, predictor in zip(self.config.offsets(), head.predictors):
                predictions = predictor(context).permute(0, 2, 3, 1) * self.config.prediction_scale
                # Recomputed in the backward pass: the (N G (G - k), N G G) logits of every offset
                # and direction would otherwise all be held at once.
                losses.append(
                    checkpoint(
                        cpc_loss, predictions, targets, offset, first, use_reentrant=False, preserve_rng_state=False
                    )
                )
        return torch.stack(losses).sum()

    def encoder_for_eval(self) -> nn.Module:
        return PatchPooledEncoder(self.backbone, self.config)

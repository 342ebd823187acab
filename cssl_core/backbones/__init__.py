"""Backbones: an encoder mapping images (N, C, H, W) to features (N, D), resolved by name.

ResNets are torchvision's (``resnet.py``), with the CIFAR stem for images of 64 px and less;
ViTs are written out in ``vit.py``; ``norm.py`` swaps BatchNorm for GroupNorm with
weight-standardised convolutions (``norm="gn_ws"``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from cssl_core.backbones.norm import NORMS, convert_to_gn_ws, has_batch_norm
from cssl_core.backbones.resnet import CIFAR_STEM_MAX_SIZE, SmallConvNet, build_resnet
from cssl_core.backbones.vit import (
    POSITION_EMBEDDINGS,
    VIT_SIZES,
    VisionTransformer,
    disable_drop_path,
    vit_patch_size,
    vit_small,
    vit_tiny,
)
from cssl_core.errors import ConfigError

__all__ = [
    "BACKBONES",
    "CIFAR_STEM_MAX_SIZE",
    "NORMS",
    "POSITION_EMBEDDINGS",
    "BackboneSpec",
    "SmallConvNet",
    "ViTOptions",
    "VisionTransformer",
    "backbone_names",
    "build_backbone",
    "convert_to_gn_ws",
    "disable_drop_path",
    "has_batch_norm",
    "vit_names",
    "vit_patch_size",
]


# (image_size, in_channels, width) -> (net, D); a ViT's takes ViTOptions' fields as keywords too.
Builder = Callable[..., tuple[nn.Module, int]]


@dataclass(frozen=True)
class ViTOptions:
    """The ViT variants methods ask for; the defaults are DeiT's ViT as ``vit.py`` describes it.

    ``num_heads``: attention heads (None: the backbone's own, 3 for ViT-Ti and 6 for ViT-S; MoCo
    v3's ViTs have 12). ``position_embedding``: "learned" or "sincos" (MoCo v3's fixed one).
    ``drop_path_rate``: stochastic depth of the last block (DINO's student: 0.1).
    """

    num_heads: int | None = None
    position_embedding: str = "learned"
    drop_path_rate: float = 0.0

    def validate(self, name: str) -> None:
        """Refuse options that ViT ``name`` cannot take, naming the one at fault."""
        embed_dim = VIT_SIZES[name][0]
        if self.num_heads is not None and (self.num_heads < 1 or embed_dim % self.num_heads):
            raise ConfigError(
                f"{name} is {embed_dim} wide: its number of heads must divide {embed_dim}, got {self.num_heads}"
            )
        if self.position_embedding not in POSITION_EMBEDDINGS:
            raise ConfigError(
                f"unknown position embedding {self.position_embedding!r}; known: {', '.join(POSITION_EMBEDDINGS)}"
            )
        if self.position_embedding == "sincos" and embed_dim % 4:
            raise ConfigError(f"a sin-cos position embedding needs a width divisible by 4; {name} is {embed_dim}")
        if not 0 <= self.drop_path_rate < 1:
            raise ConfigError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    description: str
    build: Builder = field(repr=False, compare=False)
    is_vit: bool = False


def _vit(factory: Callable[..., VisionTransformer]) -> Builder:
    def build(
        image_size: int, in_channels: int, width: float, options: ViTOptions = ViTOptions()
    ) -> tuple[nn.Module, int]:
        if in_channels != 3 or width != 1.0:
            raise ConfigError(
                f"ViT backbones take 3-channel images at width 1, not {in_channels} channels "
                f"at width {width}; use a ResNet or small"
            )
        net = factory(
            image_size,
            options.num_heads,
            position_embedding=options.position_embedding,
            drop_path_rate=options.drop_path_rate,
        )
        return net, net.embed_dim

    return build


def _small(image_size: int, in_channels: int, width: float) -> tuple[nn.Module, int]:
    net = SmallConvNet(in_channels, width)
    return net, net.feature_dim


BACKBONES = {
    "resnet18": BackboneSpec(
        "resnet18",
        "torchvision ResNet-18, 512 features",
        lambda size, channels, width: build_resnet("resnet18", size, channels, width),
    ),
    "resnet50": BackboneSpec(
        "resnet50",
        "torchvision ResNet-50, 2048 features",
        lambda size, channels, width: build_resnet("resnet50", size, channels, width),
    ),
    "small": BackboneSpec(
        "small",
        "4-block 3x3 convnet (32-64-128-256), 256 features, ~0.39M parameters; fast on CPUs",
        _small,
    ),
    "vit_tiny": BackboneSpec(
        "vit_tiny",
        "ViT-Ti (DeiT): 192 wide, 12 blocks, 3 heads, 192 features; patch 16, or size/8 below 224 px",
        _vit(vit_tiny),
        is_vit=True,
    ),
    "vit_small": BackboneSpec(
        "vit_small",
        "ViT-S (DeiT): 384 wide, 12 blocks, 6 heads, 384 features; patch 16, or size/8 below 224 px",
        _vit(vit_small),
        is_vit=True,
    ),
}


def backbone_names() -> list[str]:
    return sorted(BACKBONES)


def build_backbone(
    name: str,
    image_size: int,
    *,
    norm: str = "bn",
    frozen_patch_embed: bool = False,
    in_channels: int = 3,
    width: float = 1.0,
    vit: ViTOptions | None = None,
) -> tuple[nn.Module, int]:
    """Return ``(backbone, feature_dim)``; the backbone's forward gives (N, feature_dim).

    ``in_channels`` and ``width`` (ResNets and ``small`` only): images of that many channels, and
    every stage's channel count times ``width`` (CMC's half-width encoders of L and of ab); the
    feature dimension scales with it.

    ``norm="gn_ws"``: GroupNorm and weight-standardised convolutions in place of BatchNorm
    (``norm.convert_to_gn_ws``). ViTs have no BatchNorm, so it leaves them as they are, their
    patch projection included.
    ``frozen_patch_embed``: a ViT's patch projection stays at its random init (MoCo v3).
    ``vit``: a ViT's heads, position embedding and stochastic depth (:class:`ViTOptions`).
    """
    spec = BACKBONES.get(name)
    if spec is None:
        raise ConfigError(f"unknown backbone {name!r}; known backbones: {', '.join(backbone_names())}")
    if norm not in NORMS:
        raise ConfigError(f"unknown norm {norm!r}; known norms: {', '.join(NORMS)}")
    if frozen_patch_embed and not spec.is_vit:
        raise ConfigError(f"frozen_patch_embed applies to ViTs only ({', '.join(vit_names())}), not {name!r}")
    if in_channels < 1 or not width > 0:
        raise ConfigError(f"in_channels and width must be positive, got {in_channels} and {width}")
    if vit is not None and vit != ViTOptions() and not spec.is_vit:
        raise ConfigError(
            f"heads, position embedding and drop path ({vit}) apply to ViTs only "
            f"({', '.join(vit_names())}), not {name!r}"
        )
    if vit is not None and spec.is_vit:
        vit.validate(name)
        net, feature_dim = spec.build(image_size, in_channels, width, vit)
    else:
        net, feature_dim = spec.build(image_size, in_channels, width)
    if frozen_patch_embed:
        net.freeze_patch_embed()
    if norm == "gn_ws":
        net = convert_to_gn_ws(net)
    return net, feature_dim


def vit_names() -> list[str]:
    return sorted(name for name, spec in BACKBONES.items() if spec.is_vit)

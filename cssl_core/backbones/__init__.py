"""Backbones: an encoder mapping images (N, 3, H, W) to features (N, D).

ResNets are torchvision's, so an exported ``state_dict`` loads into ``torchvision.models``.
For inputs of 64 px and below they get the CIFAR stem (He et al. 2016, arXiv 1512.03385,
Sec. 4.2): a 3x3 stride-1 first convolution and no max-pool.
"""

from __future__ import annotations

from dataclasses import dataclass

import torchvision
from torch import nn

from cssl_core.errors import ConfigError

CIFAR_STEM_MAX_SIZE = 64


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    description: str


BACKBONES = {
    "resnet18": BackboneSpec("resnet18", "torchvision ResNet-18, 512 features"),
    "resnet50": BackboneSpec("resnet50", "torchvision ResNet-50, 2048 features"),
    "small": BackboneSpec("small", "4-block 3x3 convnet (32-64-128-256), 256 features, ~0.39M parameters; fast on CPUs"),
}


def backbone_names() -> list[str]:
    return sorted(BACKBONES)


def build_backbone(name: str, image_size: int) -> tuple[nn.Module, int]:
    """Return ``(backbone, feature_dim)``; the backbone's forward gives (N, feature_dim)."""
    if name == "small":
        return SmallConvNet(), SmallConvNet.feature_dim
    if name in ("resnet18", "resnet50"):
        net = getattr(torchvision.models, name)(weights=None)
        feature_dim = net.fc.in_features
        if image_size <= CIFAR_STEM_MAX_SIZE:
            net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        net.fc = nn.Identity()
        return net, feature_dim
    raise ConfigError(f"unknown backbone {name!r}; known backbones: {', '.join(backbone_names())}")


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallConvNet(nn.Sequential):
    """Four 3x3 conv-BN-ReLU blocks (32, 64, 128, 256 channels), 2x2 max-pool after the second
    and third, global average pooling: (N, 3, H, W) -> (N, 256)."""

    feature_dim = 256

    def __init__(self):
        super().__init__(
            _conv_bn_relu(3, 32),
            _conv_bn_relu(32, 64),
            nn.MaxPool2d(2),
            _conv_bn_relu(64, 128),
            nn.MaxPool2d(2),
            _conv_bn_relu(128, 256),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )

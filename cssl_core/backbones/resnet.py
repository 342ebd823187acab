"""Convolutional backbones: torchvision's ResNets and a small convnet for CPUs.

ResNets are torchvision's, so an exported ``state_dict`` loads into ``torchvision.models``.
For inputs of 64 px and below they get the CIFAR stem (He et al. 2016, arXiv 1512.03385,
Sec. 4.2): a 3x3 stride-1 first convolution and no max-pool.
"""

from __future__ import annotations

import torchvision
from torch import nn

CIFAR_STEM_MAX_SIZE = 64


def build_resnet(name: str, image_size: int) -> tuple[nn.Module, int]:
    """torchvision ``resnet18`` or ``resnet50`` without its classifier: (N, 3, H, W) -> (N, 512 or 2048)."""
    net = getattr(torchvision.models, name)(weights=None)
    feature_dim = net.fc.in_features
    if image_size <= CIFAR_STEM_MAX_SIZE:
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    return net, feature_dim


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

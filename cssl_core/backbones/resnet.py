"""Convolutional backbones: torchvision's ResNets and a small convnet for CPUs.

ResNets are torchvision's, so an exported ``state_dict`` loads into ``torchvision.models``.
For inputs of 64 px and below they get the CIFAR stem (He et al. 2016, arXiv 1512.03385,
Sec. 4.2): a 3x3 stride-1 first convolution and no max-pool.

Both take a channel count and a width: CMC (arXiv 1906.05849, Sec. 4.2; official
``models/resnet.py``) encodes the L channel and the ab channels of an image with two ResNets of
half width, 1 and 2 input channels.
"""

from __future__ import annotations

from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from cssl_core.sizes import SMALL_IMAGE_MAX_SIZE as CIFAR_STEM_MAX_SIZE

_RESNETS = {"resnet18": (BasicBlock, [2, 2, 2, 2]), "resnet50": (Bottleneck, [3, 4, 6, 3])}


class ScaledResNet(ResNet):
    """torchvision's ResNet with each stage's width (64, 128, 256, 512) times ``width``; the stem
    keeps its 64 channels, as CMC's ``ResNet(width=0.5)``. Its keys are torchvision's."""

    def __init__(self, block: type[BasicBlock | Bottleneck], layers: list[int], width: float):
        self.width = width  # read by _make_layer, which ResNet.__init__ calls
        super().__init__(block, layers)

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
        return super()._make_layer(block, int(planes * self.width), blocks, stride, dilate)


def build_resnet(name: str, image_size: int, in_channels: int = 3, width: float = 1.0) -> tuple[nn.Module, int]:
    """torchvision ``resnet18`` or ``resnet50`` without its classifier: (N, in_channels, H, W) ->
    (N, 512 or 2048 times ``width``)."""
    block, layers = _RESNETS[name]
    net = ScaledResNet(block, layers, width)  # at width 1 the module (and its init) of torchvision.models.<name>
    feature_dim = int(512 * width) * block.expansion
    if image_size <= CIFAR_STEM_MAX_SIZE:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    net.fc = nn.Identity()
    return net, feature_dim


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallConvNet(nn.Sequential):
    """Four 3x3 conv-BN-ReLU blocks (32, 64, 128, 256 channels times ``width``), 2x2 max-pool after
    the second and third, global average pooling: (N, in_channels, H, W) -> (N, feature_dim),
    feature_dim = 256 at width 1."""

    feature_dim = 256

    def __init__(self, in_channels: int = 3, width: float = 1.0):
        c1, c2, c3, c4 = (max(1, int(c * width)) for c in (32, 64, 128, 256))
        super().__init__(
            _conv_bn_relu(in_channels, c1),
            _conv_bn_relu(c1, c2),
            nn.MaxPool2d(2),
            _conv_bn_relu(c2, c3),
            nn.MaxPool2d(2),
            _conv_bn_relu(c3, c4),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.feature_dim = c4

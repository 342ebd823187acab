"""RandAugment (Cubuk et al., arXiv 1909.13719) for a batch, as timm implements it and InfoMin
uses it (Tian et al., arXiv 2005.10243; code: PyContrast's ``rand_augment_transform
('rand-n2-m10-mstd0.5')``, a copy of timm's ``auto_augment.py``).

Each image draws ``num_ops`` ops uniformly, with replacement, from the 15 of timm's
``_RAND_TRANSFORMS`` (:data:`OPS`); each drawn op applies with probability ``p`` (timm's 0.5)
at a magnitude drawn for that image and step from N(m, std), clipped to [0, 10] (timm's
``_LEVEL_DENOM``); rotations, shears and translations take a random sign. The ops are PIL's
(``ImageOps``, ``ImageEnhance``, ``Image.transform``), on float images (N, 3, H, W) in [0, 1]:

* a pixel op runs on the images that drew it at this step, each with its own argument;
* the five geometric ops are affine maps, so every image that drew one at a step is resampled
  by one ``grid_sample``, each with its own matrix, filled outside with PyContrast's fill
  colour (the ImageNet mean).

Differences from timm: bilinear resampling only (timm picks bilinear or bicubic per call), and
only equalize and posterize quantise their output to 256 levels (PIL's ops all work on uint8
images).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from cssl_core.augment.ops import LUMA_WEIGHTS, apply_selected

LEVEL_MAX = 10.0  # timm's _LEVEL_DENOM: a magnitude m gives the fraction m / 10 of each op's range
OPS = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "Posterize",
    "Solarize",
    "SolarizeAdd",
    "Color",
    "Contrast",
    "Brightness",
    "Sharpness",
    "ShearX",
    "ShearY",
    "TranslateXRel",
    "TranslateYRel",
)
GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
# PyContrast's fill: the ImageNet mean in uint8, (124, 116, 104).
FILL = tuple(min(255, round(255 * m)) / 255 for m in (0.485, 0.456, 0.406))


@dataclass(frozen=True)
class RandAugmentParams:
    """Per-image RandAugment draws, on the CPU; each field is (N, num_ops), one column per step.

    ``ops``: long, the index in :data:`OPS` of the op the image draws at that step;
    ``applied``: bool, false where that op is skipped; ``magnitude``: float64 in [0, 10];
    ``sign``: float64, -1 or +1, the direction of a rotation, shear or translation.
    """

    ops: Tensor
    applied: Tensor
    magnitude: Tensor
    sign: Tensor

    def arguments(self) -> Tensor:
        """Each op's argument (N, num_ops) float64, from timm's ``*_level_to_arg`` functions."""
        fraction, sign = self.magnitude / LEVEL_MAX, self.sign
        enhance = fraction * 1.8 + 0.1  # blend factor in [0.1, 1.9]
        zero = torch.zeros_like(fraction)
        table = {
            "Rotate": fraction * 30.0 * sign,  # degrees, counter-clockwise
            "Posterize": torch.floor(fraction * 4),  # bits kept, 0 to 4 (timm's "Posterize", the TPU variant)
            "Solarize": torch.floor(fraction * 256),  # threshold on uint8 levels; 256 inverts nothing
            "SolarizeAdd": torch.floor(fraction * 110),  # uint8 levels added below 128
            "Color": enhance,
            "Contrast": enhance,
            "Brightness": enhance,
            "Sharpness": enhance,
            "ShearX": fraction * 0.3 * sign,
            "ShearY": fraction * 0.3 * sign,
            "TranslateXRel": fraction * 0.45 * sign,
            "TranslateYRel": fraction * 0.45 * sign,  # of the side
        }
        stacked = torch.stack([table.get(name, zero) for name in OPS], dim=-1)
        return stacked.gather(-1, self.ops.unsqueeze(-1)).squeeze(-1)


def sample_randaugment_params(
    n: int, num_ops: int, magnitude: float, magnitude_std: float, p: float, generator: torch.Generator
) -> RandAugmentParams:
    """Draw timm's ``RandAugment(rand_augment_ops(magnitude, {"magnitude_std": std}), num_ops)``
    for ``n`` images: ops uniform with replacement, each applied with probability ``p``."""
    ops = torch.randint(len(OPS), (n, num_ops), generator=generator)
    applied = torch.rand(n, num_ops, generator=generator) < p
    noise = torch.randn(n, num_ops, generator=generator, dtype=torch.float64)
    sign = 1 - 2 * (torch.rand(n, num_ops, generator=generator) < 0.5).double()
    level = (magnitude + magnitude_std * noise).clamp(0, LEVEL_MAX)
    return RandAugmentParams(ops=ops, applied=applied, magnitude=level, sign=sign)


def _per_image(argument: Tensor, images: Tensor) -> Tensor:
    return argument.to(images.device, images.dtype, non_blocking=True).view(-1, 1, 1, 1)


def _blend(degenerate: Tensor, images: Tensor, factor: Tensor) -> Tensor:
    # PIL's Image.blend(degenerate, image, factor), as every ImageEnhance class uses it.
    return torch.lerp(degenerate, images, _per_image(factor, images)).clamp_(0, 1)


def _luma(images: Tensor) -> Tensor:
    weights = torch.tensor(LUMA_WEIGHTS, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)  # (N, 1, H, W)


def _levels(images: Tensor) -> Tensor:
    """The uint8 level of each value, as a long tensor: the ops PIL runs through a lookup table."""
    return images.mul(255).round_().clamp_(0, 255).long()


def auto_contrast(images: Tensor, _: Tensor | None = None) -> Tensor:
    """``ImageOps.autocontrast``: stretch each channel of each image to span [0, 1]."""
    low = images.amin(dim=(2, 3), keepdim=True)
    high = images.amax(dim=(2, 3), keepdim=True)
    # A channel within one uint8 level is left as it is, as PIL leaves a single-level channel.
    flat = high - low < 0.5 / 255
    scale = torch.where(flat, 1.0, 1.0 / (high - low).clamp_min(1e-12))
    return ((images - torch.where(flat, 0.0, low)) * scale).clamp_(0, 1)


def equalize(images: Tensor, _: Tensor | None = None) -> Tensor:
    """``ImageOps.equalize`` on each channel of each image, its lookup table built exactly as PIL's."""
    n, channels, height, width = images.shape
    levels = _levels(images).view(n * channels, height * width)
    histogram = torch.zeros(n * channels, 256, dtype=torch.long, device=images.device)
    histogram.scatter_add_(1, levels, torch.ones_like(levels))
    last = 255 - (histogram.flip(1) > 0).long().argmax(dim=1, keepdim=True)  # highest level present
    # PIL: step = (pixels - count of the highest level) // 255; lut[i] = (step // 2 + pixels below i) // step.
    # step is 0 for a single-level channel, which PIL leaves as it is.
    step = (height * width - histogram.gather(1, last)) // 255
    below = histogram.cumsum(dim=1) - histogram
    lut = (step // 2 + below) // step.clamp_min(1)
    identity = torch.arange(256, device=images.device).expand_as(lut)
    lut = torch.where(step == 0, identity, lut.clamp_(max=255))
    return lut.gather(1, levels).view(n, channels, height, width).to(images.dtype).div_(255)


def invert(images: Tensor, _: Tensor | None = None) -> Tensor:
    """``ImageOps.invert``."""
    return 1 - images


def posterize(images: Tensor, bits: Tensor) -> Tensor:
    """``ImageOps.posterize``: keep the top ``bits`` (N,) bits of each uint8 level (0 bits: black)."""
    step = _per_image(2.0 ** (8 - bits), images)
    return torch.floor(_levels(images).to(images.dtype) / step).mul_(step).div_(255)


def solarize(images: Tensor, threshold: Tensor) -> Tensor:
    """``ImageOps.solarize``: invert the levels at or above ``threshold`` (N,), in uint8 levels."""
    above = images * 255 >= _per_image(threshold, images) - 0.5  # the level, rounded, reaches it
    return torch.where(above, 1 - images, images)


def solarize_add(images: Tensor, add: Tensor) -> Tensor:
    """timm's ``solarize_add``: add ``add`` (N,) uint8 levels to the levels below 128, capped at 255."""
    return torch.where(images * 255 < 127.5, (images + _per_image(add, images) / 255).clamp_(max=1), images)


def color(images: Tensor, factor: Tensor) -> Tensor:
    """``ImageEnhance.Color``: blend with the image's luma (0: grey, 1: unchanged)."""
    return _blend(_luma(images), images, factor)


def contrast(images: Tensor, factor: Tensor) -> Tensor:
    """``ImageEnhance.Contrast``: blend with the image's mean luma."""
    return _blend(_luma(images).mean(dim=(2, 3), keepdim=True), images, factor)


def brightness(images: Tensor, factor: Tensor) -> Tensor:
    """``ImageEnhance.Brightness``: blend with black."""
    return _blend(torch.zeros_like(images), images, factor)


def sharpness(images: Tensor, factor: Tensor) -> Tensor:
    """``ImageEnhance.Sharpness``: blend with PIL's SMOOTH filter, a 3x3 kernel (1 1 1; 1 5 1;
    1 1 1) / 13, which leaves the one-pixel border as it is."""
    n, channels, height, width = images.shape
    smooth = images.clone()
    if height > 2 and width > 2:
        kernel = torch.ones(1, 1, 3, 3, device=images.device, dtype=images.dtype)
        kernel[..., 1, 1] = 5
        inner = F.conv2d(images.reshape(n * channels, 1, height, width), kernel / 13)
        smooth[..., 1:-1, 1:-1] = inner.view(n, channels, height - 2, width - 2)
    return _blend(smooth, images, factor)


PIXEL_OPS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "AutoContrast": auto_contrast,
    "Equalize": equalize,
    "Invert": invert,
    "Posterize": posterize,
    "Solarize": solarize,
    "SolarizeAdd": solarize_add,
    "Color": color,
    "Contrast": contrast,
    "Brightness": brightness,
    "Sharpness": sharpness,
}


def affine_matrices(ops: Tensor, argument: Tensor, size: tuple[int, int]) -> Tensor:
    """PIL's ``Image.transform(AFFINE)`` data of each image's geometric op, as (N, 3, 3) float64
    matrices from output to input pixel coordinates (a pixel's centre is at +0.5).

    ShearX s: x_in = x + s y; ShearY: y_in = y + s x (both about the top-left corner, as PIL's);
    TranslateXRel t: x_in = x + t W; Rotate d degrees: ``Image.rotate``, about the centre.
    """
    height, width = size
    name = [OPS[i] for i in ops.tolist()]
    pick = lambda wanted: torch.tensor([op == wanted for op in name])  # noqa: E731
    argument = argument.double()
    matrices = torch.eye(3, dtype=torch.float64).repeat(len(name), 1, 1)
    angle = torch.where(pick("Rotate"), -argument * math.pi / 180, 0.0)
    cos, sin = angle.cos(), angle.sin()
    cx, cy = width / 2, height / 2
    matrices[:, 0, 0], matrices[:, 0, 1] = cos, sin
    matrices[:, 1, 0], matrices[:, 1, 1] = -sin, cos
    matrices[:, 0, 2] = cx - cos * cx - sin * cy
    matrices[:, 1, 2] = cy + sin * cx - cos * cy
    matrices[:, 0, 1] += torch.where(pick("ShearX"), argument, 0.0)
    matrices[:, 1, 0] += torch.where(pick("ShearY"), argument, 0.0)
    matrices[:, 0, 2] += torch.where(pick("TranslateXRel"), argument * width, 0.0)
    matrices[:, 1, 2] += torch.where(pick("TranslateYRel"), argument * height, 0.0)
    return matrices


def affine(images: Tensor, matrices: Tensor, fill: tuple[float, float, float] = FILL) -> Tensor:
    """Resample each image (N, 3, H, W) through its pixel-space matrix (N, 3, 3) from
    :func:`affine_matrices`: one bilinear ``grid_sample`` for the batch.

    As PIL's bilinear filter: a point inside the image interpolates its neighbouring pixels
    (clamped at the edge), and a point outside it takes ``fill``.
    """
    n, channels, height, width = images.shape
    # Normalised coordinates (align_corners=False): u = 2 x / W - 1, where x is in pixels.
    to_pixels = torch.tensor([[width / 2, 0, width / 2], [0, height / 2, height / 2], [0, 0, 1]], dtype=torch.float64)
    theta = (torch.linalg.inv(to_pixels) @ matrices @ to_pixels)[:, :2].to(images.dtype)
    grid = F.affine_grid(theta.to(images.device, non_blocking=True), [n, channels, height, width], align_corners=False)
    sampled = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    outside = ((grid < -1) | (grid >= 1)).any(dim=-1).unsqueeze(1)  # (N, 1, H, W)
    fill_t = torch.tensor(fill, device=images.device, dtype=images.dtype).view(1, channels, 1, 1)
    return torch.where(outside, fill_t, sampled)


def randaugment(images: Tensor, params: RandAugmentParams, inplace: bool = False) -> Tensor:
    """Apply the drawn ops to float images (N, 3, H, W) in [0, 1], step by step; returns (N, 3, H, W).

    At each step every image has one op (or none), so the ops of a step touch disjoint images:
    each pixel op runs once on the images that drew it, and one ``grid_sample`` serves all
    images that drew a geometric op. ``inplace`` lets the steps write into ``images``.
    """
    x = images if inplace else images.clone()
    arguments = params.arguments()
    geometric = torch.tensor([name in GEOMETRIC for name in OPS])
    size = (images.shape[-2], images.shape[-1])
    for step in range(params.ops.shape[1]):
        ops, argument = params.ops[:, step], arguments[:, step]
        for index, name in enumerate(OPS):
            if name in PIXEL_OPS:
                op = PIXEL_OPS[name]
                chosen = params.applied[:, step] & (ops == index)
                x = apply_selected(
                    x, chosen, lambda im, sel, op=op, argument=argument: op(im, argument[sel]), inplace=True
                )
        chosen = params.applied[:, step] & geometric[ops]
        x = apply_selected(
            x,
            chosen,
            lambda im, sel, ops=ops, argument=argument: affine(im, affine_matrices(ops[sel], argument[sel], size)),
            inplace=True,
        )
    return x

"""Colour jitter for a batch, each image with its own factors and its own order of the four ops.

torchvision's ``ColorJitter`` (used by SimCLR, arXiv 2002.05709 App. A; MoCo v2, arXiv
2003.04297; BYOL, arXiv 2006.07733 App. B) adjusts brightness, contrast, saturation and hue
in a random order and clamps to [0, 1] after each. Each of the four is an affine map of a
pixel's RGB vector, x -> M x + k * mean_luma(image):

* brightness b:  M = b I                                   (torchvision: blend with black)
* contrast c:    M = c I,  k = 1 - c                       (blend with the mean luma)
* saturation s:  M = s I + (1 - s) 1 w^T                   (blend with the luma w^T x)
* hue h:         M = rotation by 360 h degrees about the grey axis (1, 1, 1)

so per image and step only M and k differ, and one batched 3x3 matmul per step applies all
images at once whatever their orders: four steps, no masks and no loop over images.

Hue is a linear approximation, not torchvision's RGB -> HSV -> RGB (which costs tens of
elementwise passes). HSV's hue is the angle, measured around a hexagon, of a colour's
projection onto the plane perpendicular to the grey axis; rotating about that axis turns
that angle by 360 h degrees and keeps the mean (R + G + B) / 3 and the distance from grey,
where HSV keeps max(R, G, B) and the hexagonal distance. On natural colours the HSV hue of
the result is off by a median 0.004 of a turn for h = 0.1 (the common YIQ rotation: 0.025,
as YIQ spaces the primaries unevenly); saturated colours may leave the RGB cube and are
clamped. ``tests/test_augment.py`` checks the hue it produces against torchvision's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from cssl_core.augment.ops import LUMA_WEIGHTS, sample_mask

# Cross-product matrix of the unit grey axis (1, 1, 1) / sqrt(3), for Rodrigues' formula.
_GREY_CROSS = torch.tensor([[0, -1, 1], [1, 0, -1], [-1, 1, 0]], dtype=torch.float64) / math.sqrt(3)
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)


@dataclass(frozen=True)
class JitterParams:
    """Per-image colour-jitter draws, all on the CPU.

    ``brightness``, ``contrast``, ``saturation``: float64 (N,) factors (1 leaves the image
    unchanged); ``hue``: float64 (N,) shift as a fraction of the hue circle, in [-0.5, 0.5];
    ``order``: long (N, 4), ``order[i, step]`` is the op (BRIGHTNESS, CONTRAST, SATURATION,
    HUE) image i applies at that step; ``applied``: bool (N,), false where the jitter was
    skipped (those images carry the neutral factors 1, 1, 1, 0).
    """

    brightness: Tensor
    contrast: Tensor
    saturation: Tensor
    hue: Tensor
    order: Tensor
    applied: Tensor


def sample_jitter_params(
    n: int,
    brightness: float,
    contrast: float,
    saturation: float,
    hue: float,
    p: float,
    generator: torch.Generator,
) -> JitterParams:
    """Draw torchvision ``RandomApply([ColorJitter(brightness, contrast, saturation, hue)], p)``
    for ``n`` images: factors uniform in [max(0, 1 - x), 1 + x], hue uniform in [-hue, hue],
    and a uniformly random order of the four ops per image."""
    if min(brightness, contrast, saturation, hue) < 0 or hue > 0.5:
        raise ValueError("jitter strengths must be >= 0 and hue <= 0.5")
    applied = sample_mask(n, p, generator)

    def draw(low: float, high: float, neutral: float) -> Tensor:
        factor = torch.empty(n, dtype=torch.float64).uniform_(low, high, generator=generator)
        return torch.where(applied, factor, neutral)

    return JitterParams(
        brightness=draw(max(0.0, 1 - brightness), 1 + brightness, 1.0),
        contrast=draw(max(0.0, 1 - contrast), 1 + contrast, 1.0),
        saturation=draw(max(0.0, 1 - saturation), 1 + saturation, 1.0),
        hue=draw(-hue, hue, 0.0),
        # argsort of uniform keys is a uniformly random permutation per row.
        order=torch.rand(n, 4, generator=generator).argsort(dim=1),
        applied=applied,
    )


def hue_matrices(hue: Tensor) -> Tensor:
    """RGB matrices (N, 3, 3) turning the hue by ``hue`` (N,) of a full circle: rotations about
    the grey axis (Rodrigues), positive from red towards green as in HSV."""
    angle = (2 * math.pi * hue.double()).view(-1, 1, 1)
    eye = torch.eye(3, dtype=torch.float64)
    grey = torch.full((3, 3), 1 / 3, dtype=torch.float64)  # u u^T for the unit grey axis u
    return angle.cos() * eye + angle.sin() * _GREY_CROSS + (1 - angle.cos()) * grey


def jitter_steps(params: JitterParams) -> tuple[Tensor, Tensor]:
    """The affine map of each image at each of the four steps: matrices (4, N, 3, 3) and
    mean-luma coefficients (4, N), both float32 on the CPU (see the module docstring)."""
    n = params.brightness.shape[0]
    eye = torch.eye(3, dtype=torch.float64).expand(n, 3, 3)
    luma = torch.tensor(LUMA_WEIGHTS, dtype=torch.float64).expand(3, 3)  # every row is w^T
    matrices = torch.empty(n, 4, 3, 3, dtype=torch.float64)
    matrices[:, BRIGHTNESS] = params.brightness.view(-1, 1, 1) * eye
    matrices[:, CONTRAST] = params.contrast.view(-1, 1, 1) * eye
    saturation = params.saturation.view(-1, 1, 1)
    matrices[:, SATURATION] = saturation * eye + (1 - saturation) * luma
    matrices[:, HUE] = hue_matrices(params.hue)
    offsets = torch.zeros(n, 4, dtype=torch.float64)
    offsets[:, CONTRAST] = 1 - params.contrast

    # Reorder the ops into the steps each image takes them in; step-major, so that each step's
    # (N, 3, 3) batch is one contiguous block for ``bmm``.
    steps = matrices.gather(1, params.order.view(n, 4, 1, 1).expand(n, 4, 3, 3)).transpose(0, 1)
    return steps.float().contiguous(), offsets.gather(1, params.order).T.float().contiguous()


def color_jitter(images: Tensor, params: JitterParams, inplace: bool = False) -> Tensor:
    """Apply the drawn jitter to float images (N, 3, H, W) in [0, 1]; returns (N, 3, H, W).

    ``inplace`` lets the steps reuse ``images``' memory (use the returned tensor either way).
    """
    n, channels, height, width = images.shape
    device = images.device
    matrices, offsets = jitter_steps(params)
    luma = torch.tensor(LUMA_WEIGHTS, device=device)
    x = images.reshape(n, channels, height * width)
    # The steps alternate between two buffers: fresh large tensors cost page faults on the CPU.
    buffers = (torch.empty_like(x), x if inplace else torch.empty_like(x))
    for step, step_matrices in enumerate(matrices.to(device, non_blocking=True)):
        # Contrast blends with the mean luma of the image as it is at this step; only the
        # images doing contrast now (about a quarter) need it. Indices come from the CPU.
        shift = torch.zeros(n, 1, 1, device=device)
        contrast = offsets[step].nonzero().squeeze(1)
        if contrast.numel():
            index = contrast.to(device, non_blocking=True)
            mean_luma = x.index_select(0, index).mean(dim=2) @ luma
            coefficient = offsets[step, contrast].to(device, non_blocking=True)
            shift.index_copy_(0, index, (coefficient * mean_luma).view(-1, 1, 1))
        # shift (N, 1, 1) broadcasts over (N, 3, H*W); clamping after each op, as torchvision.
        x = torch.baddbmm(shift, step_matrices, x, out=buffers[step % 2]).clamp_(0, 1)
    return x.view(n, channels, height, width)

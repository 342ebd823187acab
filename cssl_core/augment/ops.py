"""Batched view-augmentation ops: each draws its parameters per image, on the CPU, from a generator.

Images are float tensors (N, 3, H, W) in [0, 1] on any device. Every ``sample_*`` function
draws with a CPU ``torch.Generator`` and returns CPU tensors, so a seed gives the same views
on a CPU and a GPU; the ops move those few numbers to the images' device themselves. The ops
follow torchvision's semantics (``transforms.v2``), as SimCLR (arXiv 2002.05709, App. A) and
the methods after it describe their augmentations in torchvision's terms.

Colour jitter lives in :mod:`cssl_core.augment.jitter`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

# ITU-R 601 luma, the weights torchvision's ``rgb_to_grayscale`` uses.
LUMA_WEIGHTS = (0.2989, 0.587, 0.114)
CROP_TRIES = 10


def to_unit_float(images: Tensor) -> Tensor:
    """uint8 (N, 3, H, W) in [0, 255] -> float32 (N, 3, H, W) in [0, 1], on the same device."""
    if images.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images, got {images.dtype}")
    return images.float().div_(255)


def sample_mask(n: int, p: float, generator: torch.Generator) -> Tensor:
    """Which of ``n`` images an op with probability ``p`` applies to: bool (N,) on the CPU."""
    return torch.rand(n, generator=generator) < p


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> Tensor:
    return torch.empty(n, dtype=torch.float64).uniform_(low, high, generator=generator)


@dataclass(frozen=True)
class CropParams:
    """Per-image crop boxes in input pixels, as torchvision's ``RandomResizedCrop.get_params``
    returns them (whole pixels): each field is a float64 tensor (N,) on the CPU."""

    top: Tensor
    left: Tensor
    height: Tensor
    width: Tensor


def sample_crop_params(
    n: int,
    image_size: tuple[int, int] | Tensor,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
) -> CropParams:
    """Random-resized-crop boxes for ``n`` images of size ``image_size = (H, W)``, or of sizes
    ``image_size`` (N, 2) (H, W) each: images of different sizes, as a folder's are at full
    resolution. The draws do not depend on the sizes, only the boxes made of them do.

    Vectorised ``RandomResizedCrop.get_params`` (Szegedy et al. 2015, used by SimCLR, arXiv
    2002.05709 App. A.1): up to 10 tries of an area fraction uniform in ``scale`` and a
    log-uniform aspect ratio in ``ratio``; the first box that fits wins, and an image whose
    10 tries all fail gets the centre crop with the aspect ratio clamped to ``ratio``. All
    tries are drawn at once, so the draws do not depend on which try succeeds.
    """
    sizes = torch.as_tensor(image_size, dtype=torch.float64).reshape(-1, 2).expand(n, 2)
    height, width = sizes[:, 0], sizes[:, 1]
    area = (height * width).unsqueeze(1)
    target_area = area * torch.empty(n, CROP_TRIES, dtype=torch.float64).uniform_(*scale, generator=generator)
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    aspect = torch.empty(n, CROP_TRIES, dtype=torch.float64).uniform_(*log_ratio, generator=generator).exp_()
    w = torch.round(torch.sqrt(target_area * aspect))
    h = torch.round(torch.sqrt(target_area / aspect))
    fits = (w > 0) & (w <= width.unsqueeze(1)) & (h > 0) & (h <= height.unsqueeze(1))
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # argmax returns the first maximum
    w = w.gather(1, first).squeeze(1)
    h = h.gather(1, first).squeeze(1)

    # torchvision's fallback: the largest centred box whose aspect ratio lies in ``ratio``.
    in_ratio = width / height
    too_tall, too_wide = in_ratio < min(ratio), in_ratio > max(ratio)
    fallback_w = torch.where(too_wide, torch.round(height * max(ratio)), width)
    fallback_h = torch.where(too_tall, torch.round(width / min(ratio)), height)
    failed = ~fits.any(dim=1)
    w = torch.where(failed, fallback_w, w)
    h = torch.where(failed, fallback_h, h)

    # Offsets uniform over whole pixels in [0, H - h] and [0, W - w], like ``torch.randint``.
    offsets = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    top = torch.floor(offsets[:, 0] * (height - h + 1))
    left = torch.floor(offsets[:, 1] * (width - w + 1))
    top = torch.where(failed, torch.div(height - h, 2, rounding_mode="floor"), top)
    left = torch.where(failed, torch.div(width - w, 2, rounding_mode="floor"), left)
    return CropParams(top=top, left=left, height=h, width=w)


def crop_matrices(crop: CropParams, image_size: tuple[int, int], flip: Tensor | None = None) -> Tensor:
    """Affine matrices (N, 2, 3) for ``F.affine_grid`` that map each output onto its crop box.

    With ``align_corners=False`` the normalised coordinate -1 is the left edge of pixel 0 and
    +1 the right edge of the last pixel, so the box [left, left + w] is the interval
    [2 left / W - 1, 2 (left + w) / W - 1]; negating the x scale mirrors the crop (the flip).
    """
    height, width = image_size
    scale_x = crop.width / width
    scale_y = crop.height / height
    if flip is not None:
        scale_x = torch.where(flip.cpu(), -scale_x, scale_x)
    theta = torch.zeros(crop.width.shape[0], 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = scale_x
    theta[:, 0, 2] = (2 * crop.left + crop.width) / width - 1
    theta[:, 1, 1] = scale_y
    theta[:, 1, 2] = (2 * crop.top + crop.height) / height - 1
    return theta.float()


def crop_grid(theta: Tensor, size: int, device: torch.device | str = "cpu") -> Tensor:
    """The sampling grid (N, size, size, 2) that ``F.affine_grid(theta, (N, C, size, size),
    align_corners=False)`` builds, for axis-aligned ``theta`` (N, 2, 3) as crops have.

    Without rotation or shear x depends on the column only and y on the row only, so two
    (N, size) vectors, broadcast, replace affine_grid's (N, size * size, 3) x (3, 2) matmul:
    about ten times less work, and only the vectors travel to the device.
    """
    n = theta.shape[0]
    centres = (torch.arange(size, dtype=theta.dtype) * 2 + 1) / size - 1  # pixel centres in [-1, 1]
    x = theta[:, 0, 0:1] * centres + theta[:, 0, 2:3]
    y = theta[:, 1, 1:2] * centres + theta[:, 1, 2:3]
    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    return torch.stack((x.view(n, 1, size).expand(-1, size, -1), y.view(n, size, 1).expand(-1, -1, size)), dim=-1)


def resized_crop(images: Tensor, crop: CropParams, size: int, flip: Tensor | None = None) -> Tensor:
    """Crop each image to its box, resize it to (size, size) bilinearly, and mirror the images
    where ``flip`` is true: one ``grid_sample`` for the whole batch.

    images: (N, 3, H, W) float; crop: boxes for N images; flip: bool (N,) or None.
    Returns (N, 3, size, size). Unlike torchvision there is no antialiasing: views are crops
    resized up or to about their own size, where antialiasing changes nothing.
    """
    theta = crop_matrices(crop, tuple(images.shape[-2:]), flip)
    grid = crop_grid(theta, size, images.device)
    # "border" clamps the half-pixel overshoot at a box on the image's edge, as resizing the
    # cropped image would; inside the image the sampler may read the neighbouring pixel.
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def crop_resize_image(image: Tensor, box: tuple[int, int, int, int], size: int, flip: bool) -> Tensor:
    """One uint8 image (3, H, W) at its own resolution -> its box ``(top, left, height, width)``
    resized to uint8 (3, size, size), mirrored if ``flip``: torchvision's ``RandomResizedCrop``
    on a tensor (crop, then bilinear resize with antialiasing, which matters here: a box of a
    full-resolution image is often several times the view's side)."""
    top, left, height, width = box
    region = image[:, top : top + height, left : left + width].unsqueeze(0).float()
    view = F.interpolate(region, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    if flip:
        view = view.flip(-1)
    return view.round_().clamp_(0, 255).to(torch.uint8)


def apply_selected(
    images: Tensor, mask: Tensor, op: Callable[[Tensor, Tensor], Tensor], inplace: bool = False
) -> Tensor:
    """``op(images[selected], selected)`` for the images where ``mask`` (N,) is true, the others
    unchanged. ``selected`` are CPU indices, e.g. to pick per-image parameters.

    Selecting is cheaper than computing every image and choosing with ``torch.where``: the op
    runs on the p-fraction only, and a bool-conditioned ``where`` is slow on the CPU.
    ``inplace`` writes the results into ``images`` (use the returned tensor either way).
    """
    selected = mask.cpu().nonzero().squeeze(1)  # the mask is drawn on the CPU: no device sync
    if selected.numel() == 0:
        return images
    if selected.numel() == images.shape[0]:
        return op(images, selected).contiguous()  # materialises an expanded result (luma)
    index = selected.to(images.device, non_blocking=True)
    result = op(images.index_select(0, index), selected)
    return images.index_copy_(0, index, result) if inplace else images.index_copy(0, index, result)


def horizontal_flip(images: Tensor, flip: Tensor, inplace: bool = False) -> Tensor:
    """Mirror the images (N, 3, H, W) where ``flip`` (N,) is true. Views fuse this into
    :func:`resized_crop`; this is for images that are not cropped."""
    return apply_selected(images, flip, lambda x, _: x.flip(-1), inplace)


def _luma(images: Tensor, _: Tensor) -> Tensor:
    n, channels, height, width = images.shape
    weights = torch.tensor(LUMA_WEIGHTS, device=images.device, dtype=images.dtype).view(1, 1, 3)
    luma = torch.matmul(weights, images.reshape(n, channels, height * width))  # (N, 1, H*W)
    return luma.view(n, 1, height, width).expand(n, channels, height, width)


def grayscale(images: Tensor, mask: Tensor, inplace: bool = False) -> Tensor:
    """Replace the images (N, 3, H, W) where ``mask`` (N,) is true by their luma on all three
    channels (torchvision ``RandomGrayscale``)."""
    return apply_selected(images, mask, _luma, inplace)


def solarize(images: Tensor, mask: Tensor, threshold: float = 0.5, inplace: bool = False) -> Tensor:
    """Invert the pixels at or above ``threshold`` in the images where ``mask`` (N,) is true
    (BYOL, arXiv 2006.07733, App. B; torchvision ``RandomSolarize``)."""

    def invert(x: Tensor, _: Tensor) -> Tensor:
        if threshold == 0.5:
            return torch.minimum(x, 1.0 - x)  # the same for 0.5, and several times faster
        return torch.where(x >= threshold, 1.0 - x, x)

    return apply_selected(images, mask, invert, inplace)


def blur_kernel_size(image_size: int) -> int:
    """An odd kernel about 10% of the image side (SimCLR, arXiv 2002.05709 App. A: 23 at 224)."""
    size = int(0.1 * image_size)
    return max(3, size + 1 - size % 2)


def sample_blur_sigma(n: int, sigma: tuple[float, float], generator: torch.Generator) -> Tensor:
    """Per-image Gaussian standard deviations in pixels, uniform in ``sigma``: float64 (N,)."""
    return _uniform(n, sigma[0], sigma[1], generator)


def gaussian_kernels(sigma: Tensor, kernel_size: int) -> Tensor:
    """Normalised 1-D Gaussian kernels (N, kernel_size) for standard deviations ``sigma`` (N,)."""
    half = (kernel_size - 1) / 2
    x = torch.linspace(-half, half, kernel_size, dtype=torch.float64)
    # A floor on sigma keeps sigma -> 0 a unit impulse (the identity) instead of 0 / 0.
    kernels = torch.exp(-0.5 * (x / sigma.double().clamp_min(1e-3).unsqueeze(1)) ** 2)
    return kernels / kernels.sum(dim=1, keepdim=True)


def gaussian_blur(images: Tensor, sigma: Tensor, mask: Tensor, kernel_size: int, inplace: bool = False) -> Tensor:
    """Blur the images (N, 3, H, W) where ``mask`` (N,) is true with a Gaussian of their own
    ``sigma`` (N,) pixels; reflect padding, as torchvision's ``gaussian_blur``.

    The batch is folded into channels, (1, N*3, H, W), so one depthwise (grouped) convolution
    per axis blurs every image with its own kernel. Only the selected images are convolved.
    """
    if kernel_size % 2 == 0 or kernel_size // 2 >= min(images.shape[-2:]):
        raise ValueError(f"kernel_size must be odd and under twice the image side, got {kernel_size}")

    def blur(x: Tensor, selected: Tensor) -> Tensor:
        n, channels, height, width = x.shape
        weights = gaussian_kernels(sigma.cpu()[selected], kernel_size).float().repeat_interleave(channels, dim=0)
        weights = weights.to(x.device, non_blocking=True)
        pad = kernel_size // 2
        # Padding each axis just before its pass is cheaper than padding both up front.
        folded = F.pad(x.reshape(1, n * channels, height, width), (0, 0, pad, pad), mode="reflect")
        blurred = F.conv2d(folded, weights.view(-1, 1, kernel_size, 1), groups=n * channels)
        blurred = F.pad(blurred, (pad, pad, 0, 0), mode="reflect")
        blurred = F.conv2d(blurred, weights.view(-1, 1, 1, kernel_size), groups=n * channels)
        return blurred.view(n, channels, height, width)

    return apply_selected(images, mask, blur, inplace)


def normalize(images: Tensor, mean: tuple[float, ...], std: tuple[float, ...], inplace: bool = False) -> Tensor:
    """(x - mean) / std per channel, for images (N, 3, H, W); ``inplace`` overwrites them."""
    mean_t = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images.sub_(mean_t) if inplace else images - mean_t).div_(std_t)


def denormalize(images: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """Inverse of :func:`normalize`: x * std + mean, e.g. to look at views as images."""
    mean_t = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return images * std_t + mean_t

"""A view's pipeline (:class:`ViewSpec`) and the callable that makes all views of a batch.

The pipeline is SimCLR's (arXiv 2002.05709, App. A): random resized crop, horizontal flip,
colour jitter (with probability), random grayscale, Gaussian blur, then BYOL's solarisation
(arXiv 2006.07733, App. B) and normalisation. A view with RandAugment takes InfoMin's order
(arXiv 2005.10243; PyContrast's augmentation "D"): jitter, blur, RandAugment, then grayscale.
Every draw comes from the one CPU generator the caller passes, in a fixed order, so the
training loop makes views reproducible by seeding and checkpointing that generator.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from cssl_core.augment import ops
from cssl_core.augment.jitter import color_jitter, sample_jitter_params
from cssl_core.augment.randaugment import LEVEL_MAX, randaugment, sample_randaugment_params
from cssl_core.errors import ConfigError


@dataclass(frozen=True)
class ViewSpec:
    """How to make one view; the defaults are MoCo v2's (arXiv 2003.04297) without blur.

    ``size`` is the output side in pixels. ``blur_kernel`` of None means about 10% of
    ``size`` (:func:`ops.blur_kernel_size`); blur sigmas are in output pixels.
    ``grayscale_before_jitter`` reproduces MoCo v1's order (arXiv 1911.05722, code:
    RandomGrayscale before ColorJitter). ``randaugment_ops`` > 0 adds RandAugment
    (:mod:`.randaugment`): that many ops per image, each applied with probability
    ``randaugment_p``, at magnitudes from N(``randaugment_magnitude``, ``randaugment_magnitude_std``)
    clipped to [0, 10].
    """

    size: int
    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    grayscale_before_jitter: bool = False
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel: int | None = None
    solarize_p: float = 0.0
    solarize_threshold: float = 0.5
    randaugment_ops: int = 0
    randaugment_magnitude: float = 10.0
    randaugment_magnitude_std: float = 0.5
    randaugment_p: float = 0.5

    def validate(self) -> None:
        if self.size < 1:
            raise ConfigError(f"view size must be positive, got {self.size}")
        low, high = self.crop_scale
        if not 0 < low <= high <= 1:
            raise ConfigError(f"crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}")
        if not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ConfigError(f"crop_ratio must satisfy 0 < min <= max, got {self.crop_ratio}")
        for name in ("flip_p", "jitter_p", "grayscale_p", "blur_p", "solarize_p", "randaugment_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name} must be a probability in [0, 1], got {getattr(self, name)}")
        if min(self.brightness, self.contrast, self.saturation, self.hue) < 0 or self.hue > 0.5:
            raise ConfigError("jitter strengths must be >= 0 and hue <= 0.5")
        if not 0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ConfigError(f"blur_sigma must satisfy 0 < min <= max, got {self.blur_sigma}")
        kernel = self.kernel_size()
        if kernel % 2 == 0 or (self.blur_p > 0 and kernel // 2 >= self.size):
            raise ConfigError(f"blur_kernel must be odd and under twice the view size, got {kernel}")
        if self.randaugment_ops < 0:
            raise ConfigError(f"randaugment_ops must be zero or positive, got {self.randaugment_ops}")
        if not 0 <= self.randaugment_magnitude <= LEVEL_MAX:
            raise ConfigError(f"randaugment_magnitude must be in [0, {LEVEL_MAX:g}], got {self.randaugment_magnitude}")
        if self.randaugment_magnitude_std < 0:
            raise ConfigError(
                f"randaugment_magnitude_std must be zero or positive, got {self.randaugment_magnitude_std}"
            )

    def kernel_size(self) -> int:
        return self.blur_kernel if self.blur_kernel is not None else ops.blur_kernel_size(self.size)


def make_view(
    images: Tensor, spec: ViewSpec, generator: torch.Generator, share: tuple[int, slice] | None = None
) -> Tensor:
    """One view of float images (N, 3, H, W) in [0, 1]: (N, 3, size, size) in [0, 1], not yet
    normalised. Draws per image from ``generator`` (CPU) in a fixed order.

    ``share = (batch, rows)``: ``images`` are rows ``rows`` of a batch of ``batch`` images. The
    draws are the whole batch's, and these images get their rows of them: a rank of a run on
    several processes makes its slice of the views one process makes of the whole batch."""
    n = images.shape[0] if share is None else share[0]
    crop, flip = sample_crop_flip(n, tuple(images.shape[-2:]), spec, generator)
    if share is not None:
        crop, flip = _rows(crop, share[1]), flip[share[1]]
    # The view is a fresh tensor that this function owns, so the ops after the crop work in place.
    return finish_view(ops.resized_crop(images, crop, spec.size, flip), spec, generator, share)


def sample_crop_flip(
    n: int, image_size: tuple[int, int] | Tensor, spec: ViewSpec, generator: torch.Generator
) -> tuple[ops.CropParams, Tensor]:
    """The first stage's draws for ``n`` images of size ``image_size`` ((H, W), or (N, 2) for
    images of different sizes): crop boxes in input pixels and flips, bool (N,)."""
    crop = ops.sample_crop_params(n, image_size, spec.crop_scale, spec.crop_ratio, generator)
    return crop, ops.sample_mask(n, spec.flip_p, generator)


def finish_view(
    view: Tensor, spec: ViewSpec, generator: torch.Generator, share: tuple[int, slice] | None = None
) -> Tensor:
    """The stages after crop and flip, on cropped views (N, 3, size, size) in [0, 1], in place:
    colour jitter, grayscale, blur, RandAugment, solarisation, drawn from ``generator`` in
    :func:`make_view`'s order. ``share`` as for :func:`make_view`."""
    n = view.shape[0] if share is None else share[0]

    def mine(params):
        return params if share is None else _rows(params, share[1])

    def grayscale(x: Tensor) -> Tensor:
        if spec.grayscale_p == 0:
            return x
        return ops.grayscale(x, mine(ops.sample_mask(n, spec.grayscale_p, generator)), inplace=True)

    if spec.grayscale_before_jitter:
        view = grayscale(view)
    if spec.jitter_p > 0:
        jitter = mine(
            sample_jitter_params(n, spec.brightness, spec.contrast, spec.saturation, spec.hue, spec.jitter_p, generator)
        )
        view = color_jitter(view, jitter, inplace=True)
    # SimCLR grays before the blur, InfoMin after the blur and RandAugment. Grayscale and blur
    # commute (both linear: one mixes channels, the other pixels), so only RandAugment, which
    # commutes with neither, needs grayscale moved; the other presets keep their draw order.
    grayscale_last = spec.randaugment_ops > 0 and not spec.grayscale_before_jitter
    if not spec.grayscale_before_jitter and not grayscale_last:
        view = grayscale(view)
    if spec.blur_p > 0:
        blurred = mine(ops.sample_mask(n, spec.blur_p, generator))
        sigma = mine(ops.sample_blur_sigma(n, spec.blur_sigma, generator))
        view = ops.gaussian_blur(view, sigma, blurred, spec.kernel_size(), inplace=True)
    if spec.randaugment_ops > 0:
        params = mine(
            sample_randaugment_params(
                n,
                spec.randaugment_ops,
                spec.randaugment_magnitude,
                spec.randaugment_magnitude_std,
                spec.randaugment_p,
                generator,
            )
        )
        view = randaugment(view, params, inplace=True)
    if grayscale_last:
        view = grayscale(view)
    if spec.solarize_p > 0:
        solarized = mine(ops.sample_mask(n, spec.solarize_p, generator))
        view = ops.solarize(view, solarized, spec.solarize_threshold, inplace=True)
    return view


def _rows(params, rows: slice):
    """Rows ``rows`` of per-image draws: a tensor (N, ...) or a dataclass of such tensors."""
    if isinstance(params, Tensor):
        return params[rows]
    return dataclasses.replace(params, **{f.name: getattr(params, f.name)[rows] for f in dataclasses.fields(params)})


class ViewGenerator:
    """Makes the views of a batch: ``views = view_generator(images, generator)``.

    images: uint8 (N, 3, H, W) on any device; generator: a CPU ``torch.Generator``.
    Returns one float32 tensor (N, 3, size, size) per :class:`ViewSpec`, normalised with
    ``mean`` and ``std``, on the images' device. ``share = (batch, rows)``: the images are those
    rows of a batch of ``batch``, and get their rows of the whole batch's draws (:func:`make_view`).
    """

    def __init__(self, views: Sequence[ViewSpec], mean: Sequence[float], std: Sequence[float]):
        if not views:
            raise ConfigError("a view generator needs at least one view")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ConfigError(f"mean and std need 3 values each, std > 0; got {mean}, {std}")
        for spec in views:
            spec.validate()
        self.views = tuple(views)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    @property
    def sizes(self) -> list[int]:
        """The output side of each view, in order."""
        return [spec.size for spec in self.views]

    def __len__(self) -> int:
        return len(self.views)

    def __call__(
        self, images: Tensor, generator: torch.Generator, share: tuple[int, slice] | None = None
    ) -> list[Tensor]:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (N, 3, H, W), got {tuple(images.shape)}")
        if generator.device.type != "cpu":
            # Draws happen on the CPU so that a seed gives the same views on every device.
            raise ValueError(f"the augmentation generator must be a CPU generator, got {generator.device}")
        unit = ops.to_unit_float(images)
        views = [make_view(unit, spec, generator, share) for spec in self.views]
        return [ops.normalize(view, self.mean, self.std, inplace=True) for view in views]

    def finish(
        self, crops: Sequence[Tensor], generator: torch.Generator, share: tuple[int, slice] | None = None
    ) -> list[Tensor]:
        """The views of a batch whose crop and flip are done (:func:`sample_crop_flip`, per image
        at full resolution, e.g. in data-loading processes): ``crops`` holds one uint8 tensor
        (N, 3, size, size) per view; the other stages draw from ``generator`` as in ``__call__``."""
        if [tuple(c.shape[-2:]) for c in crops] != [(s, s) for s in self.sizes]:
            raise ValueError(f"expected one crop per view of sides {self.sizes}, got {[tuple(c.shape) for c in crops]}")
        views = [finish_view(ops.to_unit_float(c), spec, generator, share) for c, spec in zip(crops, self.views)]
        return [ops.normalize(view, self.mean, self.std, inplace=True) for view in views]

"""The papers' augmentation recipes by name: ``build_views("simclr", 32, mean, std)``.

Small images (64 px or less, :data:`SMALL_IMAGE_MAX_SIZE`) get the papers' CIFAR setups:
- Gaussian blur: the papers blur ImageNet views (224 px) only; SimCLR's CIFAR-10 setup drops
  it (arXiv 2002.05709, App. B.9), as do the common CIFAR setups of MoCo v2, BYOL and SwAV,
  since a kernel of 10% of 32 px is 3 px and blurs away most of a small image. So every
  preset turns blur off for small images.
- SimCLR's colour strength is s = 0.5 on CIFAR-10 instead of 1 (App. B.9), in the simclr
  preset and in multi-crop, which uses SimCLR's colour pipeline.
- RandAugment (infomin) translates by a fraction of the image side (timm's TranslateXRel,
  0.45 at m = 10), 100 px at 224 and 14 px at 32: it scales with the image by itself.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

from cssl_core.augment.pipeline import ViewGenerator, ViewSpec
from cssl_core.errors import ConfigError
from cssl_core.sizes import SMALL_IMAGE_MAX_SIZE

Scale = tuple[float, float]


def _blur(p: float, image_size: int) -> float:
    return p if image_size > SMALL_IMAGE_MAX_SIZE else 0.0


def _simclr_spec(size: int, image_size: int, crop_scale: Scale) -> ViewSpec:
    # Jitter (0.8s, 0.8s, 0.8s, 0.2s) with p = 0.8 (App. A, Listing 1); colour strength s = 1
    # on ImageNet, 0.5 on CIFAR-10 (App. B.9).
    s = 1.0 if image_size > SMALL_IMAGE_MAX_SIZE else 0.5
    return ViewSpec(
        size=size,
        crop_scale=crop_scale,
        brightness=0.8 * s,
        contrast=0.8 * s,
        saturation=0.8 * s,
        hue=0.2 * s,
        jitter_p=0.8,
        grayscale_p=0.2,
        blur_p=_blur(0.5, image_size),
    )


def simclr(image_size: int, crop_scale: Scale | None) -> list[ViewSpec]:
    """SimCLR (arXiv 2002.05709, App. A): two views from one pipeline, crop scale (0.08, 1)."""
    spec = _simclr_spec(image_size, image_size, crop_scale or (0.08, 1.0))
    return [spec, spec]


def mocov1(image_size: int, crop_scale: Scale | None) -> list[ViewSpec]:
    """MoCo v1 (arXiv 1911.05722, Sec. 3.3 and code): crop (0.2, 1), grayscale 0.2 before an
    always-applied jitter (0.4, 0.4, 0.4, 0.4), flip."""
    spec = ViewSpec(
        size=image_size,
        crop_scale=crop_scale or (0.2, 1.0),
        brightness=0.4,
        contrast=0.4,
        saturation=0.4,
        hue=0.4,
        jitter_p=1.0,
        grayscale_p=0.2,
        grayscale_before_jitter=True,
    )
    return [spec, spec]


def mocov2(image_size: int, crop_scale: Scale | None) -> list[ViewSpec]:
    """MoCo v2 (arXiv 2003.04297, Sec. 2 and code): crop (0.2, 1), jitter (0.4, 0.4, 0.4, 0.1)
    with p = 0.8, grayscale 0.2, blur sigma in (0.1, 2) with p = 0.5, flip."""
    spec = ViewSpec(
        size=image_size,
        crop_scale=crop_scale or (0.2, 1.0),
        brightness=0.4,
        contrast=0.4,
        saturation=0.4,
        hue=0.1,
        jitter_p=0.8,
        grayscale_p=0.2,
        blur_p=_blur(0.5, image_size),
    )
    return [spec, spec]


def byol(image_size: int, crop_scale: Scale | None) -> list[ViewSpec]:
    """BYOL (arXiv 2006.07733, App. B, Table 6): an asymmetric pair. Both: crop (0.08, 1),
    flip, jitter (0.4, 0.4, 0.2, 0.1) with p = 0.8, grayscale 0.2. View 1: blur 1.0, no
    solarisation; view 2: blur 0.1, solarisation 0.2."""
    common = ViewSpec(
        size=image_size,
        crop_scale=crop_scale or (0.08, 1.0),
        brightness=0.4,
        contrast=0.4,
        saturation=0.2,
        hue=0.1,
        jitter_p=0.8,
        grayscale_p=0.2,
    )
    return [
        dataclasses.replace(common, blur_p=_blur(1.0, image_size), solarize_p=0.0),
        dataclasses.replace(common, blur_p=_blur(0.1, image_size), solarize_p=0.2),
    ]


def infomin(image_size: int, crop_scale: Scale | None) -> list[ViewSpec]:
    """InfoMin Aug (arXiv 2005.10243, Sec. 5; code: PyContrast's augmentation "D"): crop
    (0.2, 1) (its crop with a MoCo queue), flip, jitter (0.8, 0.8, 0.8, 0.2) with p = 0.8,
    blur sigma in (0.1, 2) with p = 0.5 (kernel 23 at 224 px), RandAugment
    "rand-n2-m10-mstd0.5" (2 ops per image, each with p = 0.5), then grayscale 0.2."""
    spec = ViewSpec(
        size=image_size,
        crop_scale=crop_scale or (0.2, 1.0),
        brightness=0.8,
        contrast=0.8,
        saturation=0.8,
        hue=0.2,
        jitter_p=0.8,
        grayscale_p=0.2,
        blur_p=_blur(0.5, image_size),
        randaugment_ops=2,
        randaugment_magnitude=10.0,
        randaugment_magnitude_std=0.5,
        randaugment_p=0.5,
    )
    return [spec, spec]


def local_crop_size(image_size: int, multiple: int = 2) -> int:
    """SwAV's local side scaled to the image, 96 px at 224, rounded to the nearest ``multiple``
    (halves up): even by default, 14 px at 32; a ViT's patch side for a ViT (96 at 224 in
    patches of 16, 16 at 32 in patches of 4), so that a local crop is a whole patch grid."""
    if multiple < 1:
        raise ConfigError(f"a local crop's side must be a multiple of a positive number, got {multiple}")
    return multiple * max(1, math.floor(image_size * 96 / 224 / multiple + 0.5))


LOCAL_CROP_SCALE = (0.05, 0.14)


def local_views(image_size: int, count: int, scale: Scale = LOCAL_CROP_SCALE, multiple: int = 2) -> list[ViewSpec]:
    """``count`` local crops for multi-crop methods (SwAV, DINO): side :func:`local_crop_size`
    (a multiple of ``multiple``), area ``scale`` of the image (SwAV's (0.05, 0.14)), SimCLR's
    colour pipeline."""
    return [_simclr_spec(local_crop_size(image_size, multiple), image_size, scale)] * count


def multicrop(image_size: int, crop_scale: Scale | None) -> list[ViewSpec]:
    """SwAV multi-crop (arXiv 2006.09882, Sec. 3.2 and code): 2 global crops at the image
    size, scale (0.14, 1), and 6 local crops at :func:`local_crop_size`, scale (0.05, 0.14);
    SimCLR's colour pipeline on each. ``crop_scale`` overrides the global crops' scale only:
    the local range is what makes a crop local."""
    global_spec = _simclr_spec(image_size, image_size, crop_scale or (0.14, 1.0))
    return [global_spec] * 2 + local_views(image_size, 6)


PRESETS: dict[str, Callable[[int, Scale | None], list[ViewSpec]]] = {
    "simclr": simclr,
    "mocov1": mocov1,
    "mocov2": mocov2,
    "byol": byol,
    "infomin": infomin,
    "multicrop": multicrop,
}


def preset_names() -> list[str]:
    return sorted(PRESETS)


def preset_views(
    preset: str,
    image_size: int,
    crop_scale: Scale | None = None,
    jitter_strength: float = 1.0,
) -> list[ViewSpec]:
    """The named preset's view specs for square images of side ``image_size``.

    ``crop_scale`` (min, max) replaces the preset's crop scale, e.g. (0.2, 1) instead of
    SimCLR's (0.08, 1) for short runs on small images; None keeps the paper's value.
    ``jitter_strength`` multiplies every view's brightness, contrast, saturation and hue
    strengths (hue capped at 0.5); 1 keeps the preset's (the paper's) values.
    """
    if preset not in PRESETS:
        raise ConfigError(f"unknown augmentation preset {preset!r}; known: {', '.join(preset_names())}")
    if image_size < 1:
        raise ConfigError(f"image_size must be positive, got {image_size}")
    if crop_scale is not None:
        crop_scale = (float(crop_scale[0]), float(crop_scale[1]))
    if jitter_strength < 0:
        raise ConfigError(f"jitter_strength must be zero or positive, got {jitter_strength}")
    return [scale_jitter(spec, jitter_strength) for spec in PRESETS[preset](image_size, crop_scale)]


def build_views(
    preset: str,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    crop_scale: Scale | None = None,
    jitter_strength: float = 1.0,
) -> ViewGenerator:
    """A :class:`ViewGenerator` for :func:`preset_views`, normalising with ``mean`` and ``std``."""
    return ViewGenerator(preset_views(preset, image_size, crop_scale, jitter_strength), mean, std)


def scale_jitter(spec: ViewSpec, strength: float) -> ViewSpec:
    if strength == 1.0:
        return spec
    return dataclasses.replace(
        spec,
        brightness=spec.brightness * strength,
        contrast=spec.contrast * strength,
        saturation=spec.saturation * strength,
        hue=min(spec.hue * strength, 0.5),
    )

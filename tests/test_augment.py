"""Batched view augmentation: sampled distributions, op semantics against torchvision, PIL and the
standard library, and the presets' views (shapes, reproducibility, per-image independence)."""

from __future__ import annotations

import colorsys
import dataclasses
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as TF
from PIL import Image, ImageEnhance, ImageOps

from cssl_core.augment import ViewSpec, build_views, make_view, ops, preset_names, preset_views
from cssl_core.augment import randaugment as ra
from cssl_core.augment.jitter import JitterParams, color_jitter, sample_jitter_params
from cssl_core.augment.presets import local_crop_size
from cssl_core.errors import ConfigError

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
F64 = torch.float64


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def uint8_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator(seed))


def smooth_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Float images in [0.1, 0.9] with natural-looking, moderately saturated colour blobs."""
    coarse = torch.rand(n, 3, 4, 4, generator=generator(seed))
    return F.interpolate(coarse, size=size, mode="bilinear", align_corners=False) * 0.8 + 0.1


def test_crop_boxes_lie_in_the_image_with_area_and_ratio_in_range():
    crop = ops.sample_crop_params(4096, (224, 224), (0.08, 1.0), (3 / 4, 4 / 3), generator())
    area = crop.height * crop.width / 224**2
    aspect = crop.width / crop.height
    assert area.min() >= 0.08 - 0.005 and area.max() <= 1.0
    assert area.min() < 0.1 and area.max() > 0.9  # the whole range is reached
    assert aspect.min() >= 3 / 4 - 0.02 and aspect.max() <= 4 / 3 + 0.02
    assert crop.top.min() >= 0 and (crop.top + crop.height).max() <= 224
    assert crop.left.min() >= 0 and (crop.left + crop.width).max() <= 224
    assert torch.equal(crop.top, crop.top.round()) and torch.equal(crop.width, crop.width.round())


def test_crop_distribution_matches_torchvision():
    n, scale, ratio = 3000, (0.08, 1.0), (3 / 4, 4 / 3)
    ours = ops.sample_crop_params(n, (64, 48), scale, ratio, generator())
    image = torch.empty(3, 64, 48)
    with torch.random.fork_rng():  # torchvision draws from the global generator
        torch.manual_seed(0)
        boxes = [T.RandomResizedCrop.get_params(image, list(scale), list(ratio)) for _ in range(n)]
    reference = torch.tensor(boxes, dtype=F64)
    top, left, height, width = reference.unbind(1)
    for name, a, b in [
        ("area", ours.height * ours.width, height * width),
        ("aspect", ours.width / ours.height, width / height),
        ("centre x", ours.left + ours.width / 2, left + width / 2),
    ]:
        relative = (a.mean() - b.mean()).abs() / b.mean()
        assert relative < 0.04, f"{name}: {a.mean():.3f} vs torchvision {b.mean():.3f}"


def test_crop_falls_back_to_the_centre_like_torchvision():
    # Full area: only an aspect ratio of ~1 fits a square, and nothing fits a 2:1 image.
    square = ops.sample_crop_params(256, (32, 32), (1.0, 1.0), (3 / 4, 4 / 3), generator())
    assert (square.height == 32).all() and (square.width == 32).all() and (square.top == 0).all()
    wide = ops.sample_crop_params(256, (32, 64), (1.0, 1.0), (3 / 4, 4 / 3), generator())
    assert (wide.height == 32).all() and (wide.width == round(32 * 4 / 3)).all()
    assert (wide.top == 0).all() and (wide.left == (64 - 43) // 2).all()


def test_resized_crop_of_a_box_at_its_own_size_copies_its_pixels():
    images = torch.rand(2, 3, 32, 32, generator=generator())
    size = torch.full((2,), 16.0, dtype=F64)
    top, left = torch.tensor([3.0, 0.0], dtype=F64), torch.tensor([5.0, 16.0], dtype=F64)
    crop = ops.CropParams(top=top, left=left, height=size, width=size)
    out = ops.resized_crop(images, crop, 16, flip=torch.tensor([False, True]))
    torch.testing.assert_close(out[0], images[0, :, 3:19, 5:21])
    torch.testing.assert_close(out[1], images[1, :, 0:16, 16:32].flip(-1))


def test_crop_grid_is_affine_grid_for_crop_matrices():
    crop = ops.sample_crop_params(8, (40, 30), (0.08, 1.0), (3 / 4, 4 / 3), generator())
    theta = ops.crop_matrices(crop, (40, 30), ops.sample_mask(8, 0.5, generator()))
    expected = F.affine_grid(theta, [8, 3, 20, 20], align_corners=False)
    torch.testing.assert_close(ops.crop_grid(theta, 20), expected)


def test_resized_crop_upsamples_like_bilinear_interpolation():
    images = torch.rand(1, 3, 32, 32, generator=generator())
    crop = ops.CropParams(*(torch.tensor([v], dtype=F64) for v in (4.0, 6.0, 10.0, 12.0)))
    out = ops.resized_crop(images, crop, 24)
    reference = F.interpolate(images[:, :, 4:14, 6:18], size=(24, 24), mode="bilinear", align_corners=False)
    # Inside the box both interpolate the same pixels; on its edge torchvision clamps to the box.
    torch.testing.assert_close(out[..., 2:-2, 2:-2], reference[..., 2:-2, 2:-2])


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_masks_apply_at_rate_p(p):
    rate = ops.sample_mask(4096, p, generator()).double().mean().item()
    assert abs(rate - p) < 0.03


def test_views_are_flipped_half_the_time():
    images = torch.rand(2048, 3, 8, 8, generator=generator())
    spec = ViewSpec(size=8, crop_scale=(1.0, 1.0), jitter_p=0.0, grayscale_p=0.0)
    view = make_view(images, spec, generator())
    same = (view - images).abs().amax(dim=(1, 2, 3)) < 1e-5
    mirrored = (view - images.flip(-1)).abs().amax(dim=(1, 2, 3)) < 1e-5
    assert (same ^ mirrored).all()
    assert 0.45 < mirrored.double().mean() < 0.55
    torch.testing.assert_close(ops.horizontal_flip(images, mirrored), view)


def test_grayscale_gives_equal_channels_of_luma_where_masked():
    images = torch.rand(4, 3, 8, 8, generator=generator())
    mask = torch.tensor([True, False, True, False])
    out = ops.grayscale(images, mask)
    luma = TF.rgb_to_grayscale(images[mask], num_output_channels=3)
    torch.testing.assert_close(out[mask], luma)
    assert torch.equal(out[~mask], images[~mask])


def test_ops_in_place_on_a_fully_selected_batch():
    images = torch.rand(3, 3, 8, 8, generator=generator())
    everything = torch.ones(3, dtype=torch.bool)
    gray = ops.grayscale(images.clone(), everything, inplace=True)
    assert gray.is_contiguous() and torch.equal(gray[:, 0], gray[:, 2])
    solarized = ops.solarize(gray, everything, inplace=True)
    torch.testing.assert_close(solarized, TF.solarize(ops.grayscale(images, everything), 0.5))


@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_solarize_inverts_only_pixels_at_or_above_threshold(threshold):
    images = torch.linspace(0, 1, 3 * 8 * 8).view(1, 3, 8, 8).repeat(2, 1, 1, 1)
    out = ops.solarize(images, torch.tensor([True, False]), threshold=threshold)
    above = images[0] >= threshold
    torch.testing.assert_close(out[0][above], 1 - images[0][above])
    assert torch.equal(out[0][~above], images[0][~above])
    assert torch.equal(out[1], images[1])
    torch.testing.assert_close(out[:1], TF.solarize(images[:1], threshold))


def test_blur_with_tiny_sigma_is_the_identity():
    images = torch.rand(3, 3, 16, 16, generator=generator())
    out = ops.gaussian_blur(images, torch.full((3,), 1e-4, dtype=F64), torch.ones(3, dtype=torch.bool), 5)
    torch.testing.assert_close(out, images)


def test_blur_uses_each_images_sigma_like_torchvision():
    images = torch.rand(4, 3, 20, 20, generator=generator())
    sigma = torch.tensor([0.5, 1.0, 1.7, 2.0], dtype=F64)
    mask = torch.tensor([True, True, False, True])
    out = ops.gaussian_blur(images, sigma, mask, kernel_size=7)
    for i in range(4):
        expected = TF.gaussian_blur(images[i], [7, 7], [sigma[i].item()] * 2) if mask[i] else images[i]
        torch.testing.assert_close(out[i], expected, atol=1e-5, rtol=0)


def test_blur_kernel_is_odd_and_about_a_tenth_of_the_image():
    assert [ops.blur_kernel_size(s) for s in (32, 64, 96, 224)] == [3, 7, 9, 23]


def test_normalize_round_trip():
    images = torch.rand(2, 3, 8, 8, generator=generator())
    normalised = ops.normalize(images, MEAN, STD)
    torch.testing.assert_close(normalised[:, 1], (images[:, 1] - MEAN[1]) / STD[1])
    torch.testing.assert_close(ops.denormalize(normalised, MEAN, STD), images)


def test_jitter_factors_rate_and_orders():
    params = sample_jitter_params(4096, 0.8, 0.8, 0.8, 0.2, p=0.8, generator=generator())
    applied = params.applied
    assert abs(applied.double().mean() - 0.8) < 0.03
    for factor in (params.brightness, params.contrast, params.saturation):
        assert factor[applied].min() >= 0.2 and factor[applied].max() <= 1.8
        assert factor[applied].min() < 0.25 and factor[applied].max() > 1.75
        assert (factor[~applied] == 1).all()
    assert params.hue.abs().max() <= 0.2 and params.hue[applied].abs().max() > 0.19
    assert (params.hue[~applied] == 0).all()
    assert torch.equal(params.order.sort(dim=1).values, torch.arange(4).expand(4096, 4))
    counts = torch.bincount(params.order[:, 0], minlength=4).double() / 4096
    assert (counts - 0.25).abs().max() < 0.03  # each op comes first a quarter of the time
    assert len({tuple(row) for row in params.order.tolist()}) == 24


def test_jitter_matches_torchvision_in_each_images_order():
    images = smooth_images(6, 12)
    orders = list(itertools.permutations(range(3)))  # brightness, contrast, saturation; hue last
    params = JitterParams(
        brightness=torch.tensor([0.6, 1.3, 0.9, 1.4, 0.2, 1.0], dtype=F64),
        contrast=torch.tensor([1.4, 0.5, 1.8, 0.7, 1.2, 0.0], dtype=F64),
        saturation=torch.tensor([0.3, 1.6, 1.0, 0.0, 1.8, 1.5], dtype=F64),
        hue=torch.zeros(6, dtype=F64),
        order=torch.tensor([list(o) + [3] for o in orders]),
        applied=torch.ones(6, dtype=torch.bool),
    )
    out = color_jitter(images, params)
    adjust = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)
    factors = (params.brightness, params.contrast, params.saturation)
    for i, order in enumerate(orders):
        expected = images[i]
        for op in order:
            expected = adjust[op](expected, factors[op][i].item())
        torch.testing.assert_close(out[i], expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("hue", [0.1, -0.15, 0.3])
def test_hue_shift_turns_hsv_hue_by_the_factor(hue):
    rgb = torch.rand(400, 3, generator=generator(), dtype=F64) * 0.6 + 0.2
    one = torch.ones(1, dtype=F64)
    params = JitterParams(one, one, one, torch.tensor([hue], dtype=F64), torch.arange(4).view(1, 4), one.bool())
    out = color_jitter(rgb.T.reshape(1, 3, 1, 400).float(), params).reshape(3, 400).T.double()
    errors = []
    for before, after in zip(rgb.tolist(), out.tolist()):
        h_before, s_before, _ = colorsys.rgb_to_hsv(*before)
        if s_before > 0.2:  # the hue of a near-grey colour is ill-defined
            errors.append(abs((colorsys.rgb_to_hsv(*after)[0] - h_before - hue + 0.5) % 1 - 0.5))
    assert len(errors) > 300 and max(errors) < 0.01  # a hundredth of a turn: 3.6 degrees


def test_hue_shift_leaves_grey_grey():
    grey = torch.linspace(0, 1, 16).view(1, 1, 4, 4).expand(1, 3, 4, 4).contiguous()
    one = torch.ones(1, dtype=F64)
    params = JitterParams(one, one, one, torch.tensor([0.4], dtype=F64), torch.arange(4).view(1, 4), one.bool())
    torch.testing.assert_close(color_jitter(grey, params), grey)


@pytest.mark.parametrize("preset", preset_names())
def test_presets_give_normalised_float_views_of_the_right_shape(preset):
    views = build_views(preset, 32, MEAN, STD)
    out = views(uint8_images(8, 32), generator())
    assert len(out) == len(views) == (8 if preset == "multicrop" else 2)
    for view, size in zip(out, views.sizes):
        assert view.shape == (8, 3, size, size) and view.dtype == torch.float32 and view.device.type == "cpu"
        pixels = ops.denormalize(view, MEAN, STD)
        assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5


def test_blur_is_off_for_small_images_and_on_for_large_ones():
    assert all(spec.blur_p == 0 for preset in preset_names() for spec in build_views(preset, 32, MEAN, STD).views)
    assert [spec.blur_p for spec in build_views("byol", 96, MEAN, STD).views] == [1.0, 0.1]
    out = build_views("byol", 96, MEAN, STD)(uint8_images(4, 96), generator())
    assert [tuple(v.shape) for v in out] == [(4, 3, 96, 96)] * 2


def test_simclr_colour_strength_is_half_on_small_images():
    def strengths(size):
        spec = build_views("simclr", size, MEAN, STD).views[0]
        return spec.brightness, spec.contrast, spec.saturation, spec.hue

    assert strengths(32) == pytest.approx((0.4, 0.4, 0.4, 0.1))  # s = 0.5, CIFAR-10 (App. B.9)
    assert strengths(96) == pytest.approx((0.8, 0.8, 0.8, 0.2))  # s = 1, ImageNet (App. A)
    assert build_views("multicrop", 32, MEAN, STD).views[-1].brightness == pytest.approx(0.4)


def test_multicrop_gives_two_global_and_six_local_views():
    views = build_views("multicrop", 32, MEAN, STD)
    assert views.sizes == [32, 32] + [14] * 6 and local_crop_size(224) == 96
    assert [spec.crop_scale for spec in views.views[1:3]] == [(0.14, 1.0), (0.05, 0.14)]
    out = views(uint8_images(4, 32), generator())
    assert [v.shape[-1] for v in out] == views.sizes


def test_crop_scale_override_keeps_the_rest_of_the_preset():
    assert build_views("simclr", 32, MEAN, STD).views[0].crop_scale == (0.08, 1.0)
    assert build_views("simclr", 32, MEAN, STD, crop_scale=(0.2, 1)).views[0].crop_scale == (0.2, 1.0)
    multicrop = build_views("multicrop", 32, MEAN, STD, crop_scale=(0.3, 1)).views
    assert multicrop[0].crop_scale == (0.3, 1.0) and multicrop[-1].crop_scale == (0.05, 0.14)
    with pytest.raises(ConfigError, match="crop_scale"):
        build_views("simclr", 32, MEAN, STD, crop_scale=(0.5, 0.2))


def test_jitter_strength_scales_every_views_colour_jitter_and_nothing_else():
    full = build_views("byol", 32, MEAN, STD).views
    half = build_views("byol", 32, MEAN, STD, jitter_strength=0.5).views
    for a, b in zip(full, half):
        assert (b.brightness, b.contrast, b.saturation, b.hue) == pytest.approx(
            (a.brightness / 2, a.contrast / 2, a.saturation / 2, a.hue / 2)
        )
        assert (b.crop_scale, b.jitter_p, b.grayscale_p, b.solarize_p) == (
            a.crop_scale,
            a.jitter_p,
            a.grayscale_p,
            a.solarize_p,
        )
    assert build_views("mocov1", 32, MEAN, STD, jitter_strength=2.0).views[0].hue == 0.5  # capped
    with pytest.raises(ConfigError, match="jitter_strength"):
        build_views("simclr", 32, MEAN, STD, jitter_strength=-1)


@pytest.mark.parametrize("method", ["byol", "infomin"])
def test_same_seed_same_views_and_a_restored_generator_state_repeats_them(method):
    views, images = build_views(method, 32, MEAN, STD), uint8_images(32, 32)
    first = views(images, generator(7))
    assert all(torch.equal(a, b) for a, b in zip(first, views(images, generator(7))))
    g = generator(7)
    views(images, g)
    state = g.get_state()
    nxt = views(images, g)
    g.set_state(state)
    assert all(torch.equal(a, b) for a, b in zip(nxt, views(images, g)))
    assert all(not torch.equal(a, b) for a, b in zip(first, views(images, generator(8))))


def test_images_in_one_batch_get_their_own_crops():
    crop = ops.sample_crop_params(2, (32, 32), (0.08, 1.0), (3 / 4, 4 / 3), generator())
    assert (crop.top[0], crop.left[0], crop.height[0]) != (crop.top[1], crop.left[1], crop.height[1])
    images = uint8_images(1, 32).expand(2, 3, 32, 32)
    view = build_views("simclr", 32, MEAN, STD)(images, generator())[0]
    assert not torch.allclose(view[0], view[1])


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ConfigError) as error:
        build_views("simclrr", 32, MEAN, STD)
    assert all(name in str(error.value) for name in preset_names())


def test_view_generator_rejects_bad_input():
    views = build_views("simclr", 32, MEAN, STD)
    with pytest.raises(ValueError, match="uint8"):
        views(torch.rand(2, 3, 32, 32), generator())
    with pytest.raises(ValueError, match="shape"):
        views(uint8_images(2, 32)[:, :1], generator())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize(
    "preset, n, share",
    [
        ("mocov2", 8, 1.0),  # same draws, float rounding only
        # equalize and posterize round to uint8 levels, where float rounding may differ
        ("infomin", 16, 0.99),
    ],
)
def test_views_on_the_gpu_match_the_cpu(preset, n, share):
    views, images = build_views(preset, 96, MEAN, STD), uint8_images(n, 96)
    cpu = views(images, generator())
    gpu = views(images.cuda(), generator())
    for a, b in zip(cpu, gpu):
        assert b.device.type == "cuda"
        assert ((b.cpu() - a).abs() <= 1e-3).double().mean() >= share


# RandAugment: each op against PIL on uint8 images (as timm calls it), then the batched application.

PIL_FILL = (124, 116, 104)  # PyContrast's img_mean
PIXEL_LEVEL = 1.5 / 255  # PIL truncates its results to uint8 levels


def pil_image(images: torch.Tensor) -> Image.Image:
    return Image.fromarray(images[0].mul(255).round().byte().permute(1, 2, 0).numpy().copy())


def from_pil(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).unsqueeze(0).float() / 255


def reference_images() -> list[torch.Tensor]:
    """Uint8-valued float images (1, 3, 20, 24): noise, and smooth blobs; not square, so H and W
    cannot be swapped unnoticed."""
    noise = uint8_images(1, 24)[..., :20, :].float() / 255
    smooth = (
        F.interpolate(torch.rand(1, 3, 4, 5, generator=generator()), size=(20, 24), mode="bilinear") * 255
    ).round() / 255
    return [noise, smooth]


def solarize_add_lut(add: int) -> list[int]:
    return [min(255, i + add) if i < 128 else i for i in range(256)] * 3


PIXEL_REFERENCES = [
    ("AutoContrast", 0, lambda im, a: ImageOps.autocontrast(im)),
    ("Equalize", 0, lambda im, a: ImageOps.equalize(im)),
    ("Invert", 0, lambda im, a: ImageOps.invert(im)),
    ("Posterize", 4, ImageOps.posterize),
    ("Posterize", 3, ImageOps.posterize),
    ("Posterize", 1, ImageOps.posterize),
    ("Solarize", 128, ImageOps.solarize),
    ("Solarize", 222, ImageOps.solarize),
    ("Solarize", 256, ImageOps.solarize),
    ("SolarizeAdd", 95, lambda im, a: im.point(solarize_add_lut(a))),
    ("SolarizeAdd", 110, lambda im, a: im.point(solarize_add_lut(a))),
] + [
    (name, factor, lambda im, a, enhance=enhance: enhance(im).enhance(a))
    for name, enhance in [
        ("Color", ImageEnhance.Color),
        ("Contrast", ImageEnhance.Contrast),
        ("Brightness", ImageEnhance.Brightness),
        ("Sharpness", ImageEnhance.Sharpness),
    ]
    for factor in (0.1, 1.666, 1.9)
]


@pytest.mark.parametrize("name,argument,reference", PIXEL_REFERENCES, ids=[f"{n}-{a}" for n, a, _ in PIXEL_REFERENCES])
def test_randaugment_pixel_ops_match_pil(name, argument, reference):
    for images in reference_images():
        out = ra.PIXEL_OPS[name](images, torch.tensor([float(argument)], dtype=F64))
        expected = from_pil(reference(pil_image(images), argument))
        torch.testing.assert_close(out, expected, atol=PIXEL_LEVEL, rtol=0)


def test_randaugment_posterize_to_zero_bits_is_black():
    # timm's m = 0; recent PIL refuses bits = 0, whose mask ~(2**8 - 1) keeps nothing.
    images = reference_images()[0]
    assert torch.equal(ra.posterize(images, torch.zeros(1, dtype=F64)), torch.zeros_like(images))


GEOMETRIC_REFERENCES = [
    (
        "ShearX",
        0.27,
        lambda im, a: im.transform(im.size, Image.AFFINE, (1, a, 0, 0, 1, 0), Image.BILINEAR, fillcolor=PIL_FILL),
    ),
    (
        "ShearY",
        -0.3,
        lambda im, a: im.transform(im.size, Image.AFFINE, (1, 0, 0, a, 1, 0), Image.BILINEAR, fillcolor=PIL_FILL),
    ),
    (
        "TranslateXRel",
        0.41,
        lambda im, a: im.transform(
            im.size, Image.AFFINE, (1, 0, a * im.size[0], 0, 1, 0), Image.BILINEAR, fillcolor=PIL_FILL
        ),
    ),
    (
        "TranslateYRel",
        -0.45,
        lambda im, a: im.transform(
            im.size, Image.AFFINE, (1, 0, 0, 0, 1, a * im.size[1]), Image.BILINEAR, fillcolor=PIL_FILL
        ),
    ),
    ("Rotate", 27.0, lambda im, a: im.rotate(a, Image.BILINEAR, fillcolor=PIL_FILL)),
    ("Rotate", -30.0, lambda im, a: im.rotate(a, Image.BILINEAR, fillcolor=PIL_FILL)),
]


@pytest.mark.parametrize(
    "name,argument,reference", GEOMETRIC_REFERENCES, ids=[f"{n}-{a}" for n, a, _ in GEOMETRIC_REFERENCES]
)
def test_randaugment_geometric_ops_match_pil(name, argument, reference):
    for images in reference_images():
        matrices = ra.affine_matrices(torch.tensor([ra.OPS.index(name)]), torch.tensor([argument], dtype=F64), (20, 24))
        out = ra.affine(images, matrices)
        expected = from_pil(reference(pil_image(images), argument))
        torch.testing.assert_close(out, expected, atol=PIXEL_LEVEL, rtol=0)
        outside = (expected * 255 - torch.tensor(PIL_FILL).view(1, 3, 1, 1)).abs().amax(dim=1) == 0
        assert outside.any()  # the fill is exercised


def test_randaugment_arguments_follow_timms_levels():
    ops_ = torch.arange(len(ra.OPS)).expand(3, -1)
    magnitude = torch.tensor([10.0, 8.7, 0.0], dtype=F64).view(3, 1).expand(3, len(ra.OPS))
    sign = torch.tensor([1.0, -1.0, 1.0], dtype=F64).view(3, 1).expand(3, len(ra.OPS))
    params = ra.RandAugmentParams(ops_, torch.ones(3, len(ra.OPS), dtype=torch.bool), magnitude, sign)
    args = dict(zip(ra.OPS, params.arguments().T.tolist()))
    # Worked by hand from timm's *_level_to_arg: int() truncates, m / 10 scales each range.
    expected = {
        "Rotate": [30.0, -26.1, 0.0],
        "Posterize": [4, 3, 0],
        "Solarize": [256, 222, 0],
        "SolarizeAdd": [110, 95, 0],
        "Color": [1.9, 1.666, 0.1],
        "Sharpness": [1.9, 1.666, 0.1],
        "ShearX": [0.3, -0.261, 0.0],
        "TranslateYRel": [0.45, -0.3915, 0.0],
    }
    for name, values in expected.items():
        assert args[name] == pytest.approx(values), name
    # Relative translation: 0.45 of the side at m = 10, on any image size.
    matrices = ra.affine_matrices(
        torch.tensor([ra.OPS.index("TranslateXRel")] * 2), torch.tensor([0.45, -0.45], dtype=F64), (32, 32)
    )
    assert matrices[:, 0, 2].tolist() == pytest.approx([14.4, -14.4])


def test_randaugment_draws_ops_magnitudes_and_signs_per_image_and_step():
    n = 6000
    params = ra.sample_randaugment_params(n, 2, 10.0, 0.5, 0.5, generator())
    assert params.ops.shape == params.applied.shape == params.magnitude.shape == (n, 2)
    counts = torch.bincount(params.ops.flatten(), minlength=len(ra.OPS)).double() / (2 * n)
    assert (counts - 1 / len(ra.OPS)).abs().max() < 0.015  # uniform over the 15 ops
    assert abs(params.applied.double().mean() - 0.5) < 0.02
    level = params.magnitude
    assert level.min() >= 0 and level.max() == 10
    assert abs((level == 10).double().mean() - 0.5) < 0.02  # N(10, 0.5) clipped at 10
    assert abs(level[level < 10].mean() - (10 - 0.5 * (2 / torch.pi) ** 0.5)) < 0.02
    assert abs(params.sign.mean()) < 0.03 and set(params.sign.unique().tolist()) == {-1.0, 1.0}
    # Independent per step and per image: the two steps agree as often as chance says.
    assert abs((params.ops[:, 0] == params.ops[:, 1]).double().mean() - 1 / len(ra.OPS)) < 0.015
    assert abs((params.ops[1:, 0] == params.ops[:-1, 0]).double().mean() - 1 / len(ra.OPS)) < 0.015
    fixed = ra.sample_randaugment_params(8, 2, 7.0, 0.0, 1.0, generator())
    assert (fixed.magnitude == 7).all() and fixed.applied.all()


def reference_randaugment(image: torch.Tensor, params: ra.RandAugmentParams, i: int) -> torch.Tensor:
    """One image (1, 3, H, W) through its own ops, one at a time."""
    arguments = params.arguments()
    for step in range(params.ops.shape[1]):
        if not params.applied[i, step]:
            continue
        op, argument = params.ops[i, step : step + 1], arguments[i, step : step + 1]
        name = ra.OPS[op.item()]
        if name in ra.PIXEL_OPS:
            image = ra.PIXEL_OPS[name](image, argument)
        else:
            image = ra.affine(image, ra.affine_matrices(op, argument, tuple(image.shape[-2:])))
    return image


def test_randaugment_batch_matches_each_image_alone():
    images = torch.cat([smooth_images(12, 16), torch.rand(12, 3, 16, 16, generator=generator(1))])
    params = ra.sample_randaugment_params(24, 3, 9.0, 1.0, 0.7, generator(2))
    before = images.clone()
    out = ra.randaugment(images, params)
    assert torch.equal(images, before)  # not in place unless asked
    assert len(params.ops[params.applied].unique()) == len(ra.OPS)  # every op is exercised
    for i in range(24):
        torch.testing.assert_close(
            out[i : i + 1], reference_randaugment(images[i : i + 1], params, i), atol=1e-6, rtol=0
        )
    assert torch.equal(ra.randaugment(images.clone(), params, inplace=True), out)


def test_randaugment_gives_every_image_exactly_its_n_ops_at_its_own_magnitudes():
    n, steps = 16, 3
    images = torch.rand(n, 3, 8, 8, generator=generator()) * 0.1  # dark: no clipping at 1.9 ** 3
    params = ra.sample_randaugment_params(n, steps, 5.0, 3.0, 1.0, generator(1))
    assert params.applied.sum(dim=1).eq(steps).all()
    brightness = dataclasses.replace(params, ops=torch.full_like(params.ops, ra.OPS.index("Brightness")))
    factors = params.magnitude / 10 * 1.8 + 0.1  # each image's own factor at each step
    out = ra.randaugment(images, brightness)
    torch.testing.assert_close(out, images * factors.prod(dim=1).float().view(n, 1, 1, 1), rtol=1e-5, atol=1e-7)
    skipped = dataclasses.replace(brightness, applied=torch.zeros_like(params.applied))
    assert torch.equal(ra.randaugment(images, skipped), images)


def test_randaugment_sits_after_blur_and_before_grayscale_in_a_view():
    spec = ViewSpec(
        size=16,
        crop_scale=(0.5, 1.0),
        jitter_p=1.0,
        grayscale_p=0.5,
        blur_p=0.5,
        blur_kernel=3,
        randaugment_ops=2,
        randaugment_p=0.8,
    )
    images = smooth_images(8, 16)
    view = make_view(images, spec, generator(3))
    g, n = generator(3), 8  # InfoMin's order (PyContrast "D"): jitter, blur, RandAugment, grayscale
    crop = ops.sample_crop_params(n, (16, 16), spec.crop_scale, spec.crop_ratio, g)
    x = ops.resized_crop(images, crop, 16, ops.sample_mask(n, spec.flip_p, g))
    x = color_jitter(x, sample_jitter_params(n, 0.4, 0.4, 0.4, 0.1, 1.0, g))
    blurred = ops.sample_mask(n, 0.5, g)
    x = ops.gaussian_blur(x, ops.sample_blur_sigma(n, spec.blur_sigma, g), blurred, 3)
    x = ra.randaugment(x, ra.sample_randaugment_params(n, 2, 10.0, 0.5, 0.8, g))
    x = ops.grayscale(x, ops.sample_mask(n, 0.5, g))
    torch.testing.assert_close(view, x)


def test_infomin_preset_is_pycontrasts_augmentation_d():
    small, large = preset_views("infomin", 32), preset_views("infomin", 224)
    assert len(large) == 2 and large[0] == large[1]
    spec = large[0]
    assert (spec.crop_scale, spec.jitter_p, spec.grayscale_p) == ((0.2, 1.0), 0.8, 0.2)
    assert (spec.brightness, spec.contrast, spec.saturation, spec.hue) == (0.8, 0.8, 0.8, 0.2)
    assert (spec.blur_p, spec.blur_sigma, spec.kernel_size()) == (0.5, (0.1, 2.0), 23)
    assert (spec.randaugment_ops, spec.randaugment_magnitude, spec.randaugment_magnitude_std, spec.randaugment_p) == (
        2,
        10.0,
        0.5,
        0.5,
    )
    assert small[0] == dataclasses.replace(spec, size=32, blur_p=0.0)  # small images: no blur, as every preset
    # MoCo v2's views but for SimCLR-strength jitter and RandAugment.
    weaker = dataclasses.replace(spec, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, randaugment_ops=0)
    assert weaker == preset_views("mocov2", 224)[0]


def is_fill(views: torch.Tensor) -> torch.Tensor:
    """Per image (N,): whether some pixel is exactly RandAugment's fill colour."""
    pixels = ops.denormalize(views, MEAN, STD)
    return ((pixels - torch.tensor(ra.FILL).view(1, 3, 1, 1)).abs().amax(dim=1) < 1e-5).flatten(1).any(dim=1)


def test_infomin_views_differ_from_mocov2s_by_randaugment():
    images = uint8_images(512, 32)
    infomin = build_views("infomin", 32, MEAN, STD)(images, generator(5))
    mocov2 = build_views("mocov2", 32, MEAN, STD)(images, generator(5))
    for a, b in zip(infomin, mocov2):
        # Alike only where neither jitter nor RandAugment applied (about 0.2 * 0.25 = 5% of images).
        assert ((a - b).abs().amax(dim=(1, 2, 3)) > 0.1).double().mean() > 0.9
        # A geometric op (5 of the 15, each draw applied with p = 0.5: 1/6 a step) brings in the
        # fill, which lasts unless a later op recolours it: a geometric op at step 2, or one at
        # step 1 followed by no op, another geometric op or Solarize (its threshold, >= 217
        # levels, spares the fill); 80% of the views are not grayed afterwards.
        expected = 0.8 * (1 / 6 + 1 / 6 * (1 / 2 + 1 / 6 + 1 / 30))
        assert abs(is_fill(a).double().mean() - expected) < 0.05
        assert not is_fill(b).any()


@pytest.mark.parametrize(
    "field,value",
    [
        ("randaugment_ops", -1),
        ("randaugment_magnitude", 10.5),
        ("randaugment_magnitude", -1.0),
        ("randaugment_magnitude_std", -0.5),
        ("randaugment_p", 1.5),
    ],
)
def test_randaugment_fields_are_validated(field, value):
    with pytest.raises(ConfigError, match=field):
        ViewSpec(size=8, **{field: value}).validate()

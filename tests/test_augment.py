"""Batched view augmentation: sampled distributions, op semantics against torchvision and the
standard library, and the presets' views (shapes, reproducibility, per-image independence)."""

from __future__ import annotations

import colorsys
import itertools

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as TF

from cssl_core.augment import ViewSpec, build_views, make_view, ops, preset_names
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
            (a.brightness / 2, a.contrast / 2, a.saturation / 2, a.hue / 2))
        assert (b.crop_scale, b.jitter_p, b.grayscale_p, b.solarize_p) == (a.crop_scale, a.jitter_p, a.grayscale_p, a.solarize_p)
    assert build_views("mocov1", 32, MEAN, STD, jitter_strength=2.0).views[0].hue == 0.5  # capped
    with pytest.raises(ConfigError, match="jitter_strength"):
        build_views("simclr", 32, MEAN, STD, jitter_strength=-1)


def test_same_seed_same_views_and_a_restored_generator_state_repeats_them():
    views, images = build_views("byol", 32, MEAN, STD), uint8_images(16, 32)
    first = views(images, generator(7))
    again = views(images, generator(7))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    g = generator(7)
    views(images, g)
    state = g.get_state()
    nxt = views(images, g)
    g.set_state(state)
    assert all(torch.equal(a, b) for a, b in zip(nxt, views(images, g)))
    other = views(images, generator(8))
    assert all(not torch.equal(a, b) for a, b in zip(first, other))


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
def test_views_on_the_gpu_match_the_cpu():
    views, images = build_views("mocov2", 96, MEAN, STD), uint8_images(8, 96)
    cpu = views(images, generator())
    gpu = views(images.cuda(), generator())
    for a, b in zip(cpu, gpu):
        assert b.device.type == "cuda"
        torch.testing.assert_close(b.cpu(), a, atol=1e-3, rtol=0)  # same draws, float rounding only

"""CMC against its defining mechanisms: Lab computed as the formulas say (checked against a float64
reference), each encoder seeing only its own channels, each view's features contrasted against the
OTHER view's memory bank in both directions, banks written at the batch's indices only, evaluation
on both encoders' features, and the data's normalisation reaching a checkpoint-built encoder."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from tiny import tiny_heads

from cssl_core.backbones import build_backbone
from cssl_core.config import build_config
from cssl_core.errors import ConfigError
from cssl_core.losses import nce_loss
from cssl_core.methods import Batch, build_method
from cssl_core.methods.cmc import LAB_MEAN, LAB_STD, normalized_lab, rgb_to_lab
from cssl_core.train import load_checkpoint, loop, pretrain
from cssl_core.train.checkpoint import build_encoder_from_checkpoint

TINY_HEADS = {**tiny_heads("cmc"), "negatives": "memory_bank"}  # the small-image recipe uses the batch
MEAN, STD = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]


def make(num_samples=64, normalization=(MEAN, STD), **overrides):
    torch.manual_seed(0)
    config = build_config("cmc", {"dataset": "synthetic", "backbone": "small", **TINY_HEADS, **overrides})
    return build_method(config, 32, num_samples, normalization)


def normalised_images(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    pixels = torch.rand(n, 3, 32, 32, generator=g)
    return (pixels - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def batch_for(n=8, seed=0, indices=None):
    indices = torch.arange(n) if indices is None else indices
    return Batch(
        views=[normalised_images(n, seed)], indices=indices, step=0, epoch=0, schedules={"lr": 0.1, "weight_decay": 0.0}
    )


def features(model, x):
    """The method's unit features (z_l, z_ab) of normalised RGB images, recomputed outside it."""
    h_l, h_ab = model.backbone.encode(normalized_lab(model.pixels(x)))
    return F.normalize(model.head_l(h_l), dim=1), F.normalize(model.head_ab(h_ab), dim=1)


# Lab


def ref_lab(r, g, b):
    """CIE Lab of one sRGB pixel in [0, 1] from the formulas (sRGB, D65), in float64."""

    def linear(c):
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = linear(r), linear(g), linear(b)
    x = (0.412453 * r + 0.357580 * g + 0.180423 * b) / 0.95047
    y = 0.212671 * r + 0.715160 * g + 0.072169 * b
    z = (0.019334 * r + 0.119193 * g + 0.950227 * b) / 1.08883

    def f(t):
        return t ** (1 / 3) if t > (6 / 29) ** 3 else t / (3 * (6 / 29) ** 2) + 4 / 29

    return 116 * f(y) - 16, 500 * (f(x) - f(y)), 200 * (f(y) - f(z))


def test_lab_matches_a_float64_reference_and_known_colours():
    g = torch.Generator().manual_seed(1)
    # Random pixels plus dark ones on both sides of the sRGB and Lab linear segments.
    pixels = torch.cat([torch.rand(60, 3, generator=g), torch.rand(20, 3, generator=g) * 0.06])
    ours = rgb_to_lab(pixels.T.reshape(1, 3, 8, 10)).reshape(3, -1).T.double()
    reference = torch.tensor([ref_lab(*p.double().tolist()) for p in pixels], dtype=torch.float64)
    torch.testing.assert_close(ours, reference, rtol=0, atol=2e-3)
    known = {  # sRGB primaries and white in Lab (D65), as colour tables give them
        (1, 1, 1): (100.0, 0.0, 0.0),
        (0, 0, 0): (0.0, 0.0, 0.0),
        (1, 0, 0): (53.24, 80.09, 67.20),
        (0, 1, 0): (87.73, -86.18, 83.18),
        (0, 0, 1): (32.30, 79.19, -107.86),
    }
    rgb = torch.tensor(list(known), dtype=torch.float32).T.reshape(1, 3, len(known), 1)
    lab = rgb_to_lab(rgb).reshape(3, -1).T
    torch.testing.assert_close(lab, torch.tensor(list(known.values())), rtol=0, atol=0.01)


def test_lab_is_float32_under_bf16_autocast_and_normalised_as_the_official_code():
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = rgb_to_lab(x)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, rgb_to_lab(x))
    expected = (rgb_to_lab(x) - torch.tensor(LAB_MEAN).view(1, 3, 1, 1)) / torch.tensor(LAB_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(normalized_lab(x), expected)
    assert LAB_MEAN[0] == 50 and LAB_STD[1] == pytest.approx(92.208)


# Two encoders, one per view


def test_each_encoder_sees_only_its_channels():
    model = make().eval()
    g = torch.Generator().manual_seed(3)
    lab = torch.randn(4, 3, 32, 32, generator=g)
    other_ab, other_l = lab.clone(), lab.clone()
    other_ab[:, 1:] = torch.randn(4, 2, 32, 32, generator=g)
    other_l[:, :1] = torch.randn(4, 1, 32, 32, generator=g)
    with torch.no_grad():
        l_feat, ab = model.backbone.encode(lab)
        l_new_ab, ab_new_ab = model.backbone.encode(other_ab)
        l_new_l, ab_new_l = model.backbone.encode(other_l)
    torch.testing.assert_close(l_new_ab, l_feat)  # new ab: the L encoder does not see it
    assert not torch.allclose(ab_new_ab, ab, atol=1e-4)
    torch.testing.assert_close(ab_new_l, ab)  # new L: the ab encoder does not see it
    assert not torch.allclose(l_new_l, l_feat, atol=1e-4)


def test_encoders_are_half_width_on_one_and_two_channels():
    model = make()
    first_l, first_ab = model.backbone.encoder_l[0][0], model.backbone.encoder_ab[0][0]
    assert (first_l.in_channels, first_ab.in_channels) == (1, 2)
    assert first_l.out_channels == first_ab.out_channels == 16  # 32 x 0.5
    assert model.feature_dim == model.backbone.dim_l + model.backbone.dim_ab == 2 * 128


def test_backbones_take_a_channel_count_and_a_width():
    net, dim = build_backbone("resnet18", 32, in_channels=1, width=0.5)
    # CMC's half-width ResNet: the stem keeps 64 channels, the stages are 32-64-128-256.
    assert net.conv1.in_channels == 1 and net.conv1.out_channels == 64
    stages = (net.layer1, net.layer2, net.layer3, net.layer4)
    assert [stage[0].conv1.out_channels for stage in stages] == [32, 64, 128, 256]
    assert dim == 256 and net.eval()(torch.randn(2, 1, 32, 32)).shape == (2, 256)
    net, dim = build_backbone("resnet50", 96, in_channels=2, width=0.5)
    assert net.conv1.in_channels == 2 and net.conv1.kernel_size == (7, 7) and dim == 1024
    net, dim = build_backbone("small", 32, in_channels=2, width=0.5)
    assert dim == 128 and net.eval()(torch.randn(2, 2, 32, 32)).shape == (2, 128)
    with pytest.raises(ConfigError, match="ViT backbones take 3-channel images"):
        build_backbone("vit_tiny", 32, in_channels=1)
    with pytest.raises(ConfigError, match="ViT backbones take 3-channel images"):
        build_backbone("vit_tiny", 32, width=0.5)


# The loss: each view against the other view's memory bank


def reference_loss_terms(model, banks, x, indices, seed):
    """Each direction's softmax loss, recomputed: the anchor's logits against the other view's
    bank as it was before the step, noise rows drawn as the method draws them (ab bank first)."""
    bank_l, bank_ab = banks
    torch.manual_seed(seed)
    noise_ab = bank_ab.negatives(len(x), model.config.num_negatives)
    noise_l = bank_l.negatives(len(x), model.config.num_negatives)
    z_l, z_ab = features(model, x)
    t = model.config.temperature

    def term(z, bank, noise):
        logits = torch.cat([(z * bank.features[indices]).sum(1, keepdim=True), torch.einsum("nd,nkd->nk", z, noise)], 1)
        return F.cross_entropy(logits / t, torch.zeros(len(z), dtype=torch.long))

    return term(z_l, bank_ab, noise_ab), term(z_ab, bank_l, noise_l)


def encoder_grads(model, loss):
    params = [list(model.backbone.encoder_l.parameters()), list(model.backbone.encoder_ab.parameters())]
    return [torch.autograd.grad(loss, p, retain_graph=True, allow_unused=True) for p in params]


def test_each_view_is_contrasted_against_the_other_views_bank_in_both_directions():
    model = make()
    with torch.no_grad():  # banks that differ from each other, and are near the features
        noise = 0.3 * torch.randn(64, model.config.head_dim)
        model.bank_l.features.copy_(F.normalize(model.bank_l.features + noise, dim=1))
    banks = copy.deepcopy((model.bank_l, model.bank_ab))
    batch = batch_for(indices=torch.tensor([5, 9, 0, 33, 17, 60, 2, 41]))
    torch.manual_seed(7)
    loss = model(batch).loss
    term_l, term_ab = reference_loss_terms(model, banks, batch.views[0], batch.indices, seed=7)
    torch.testing.assert_close(loss, term_l + term_ab, rtol=1e-5, atol=1e-5)
    # Contrasting a view against its own bank is a different loss.
    crossed = reference_loss_terms(model, banks[::-1], batch.views[0], batch.indices, seed=7)
    assert not torch.allclose(loss, sum(crossed), atol=1e-3)
    # The L encoder learns from the L-anchored term alone, the ab encoder from the ab-anchored one.
    grads_l, grads_ab = encoder_grads(model, loss)
    ref_l, _ = encoder_grads(model, term_l)
    _, ref_ab = encoder_grads(model, term_ab)
    for ours, ref in zip(grads_l + grads_ab, ref_l + ref_ab):
        assert ours is not None
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-6)
    assert all(g.abs().sum() > 0 for g in grads_l + grads_ab)
    for bank in (model.bank_l, model.bank_ab):
        assert not bank.features.requires_grad


def test_banks_change_only_at_the_batch_indices_by_the_momentum_rule():
    model = make(bank_momentum=0.8)  # not the paper's 0.5, where m and 1 - m are the same
    indices = torch.tensor([3, 17, 40, 8, 63, 22, 11, 50])
    before_l, before_ab = model.bank_l.features.clone(), model.bank_ab.features.clone()
    batch = batch_for(indices=indices)
    model(batch)
    with torch.no_grad():
        z_l, z_ab = features(model, batch.views[0])  # BN in train mode: the step's batch statistics
    rest = torch.ones(64, dtype=torch.bool)
    rest[indices] = False
    for bank, before, z in ((model.bank_l, before_l, z_l), (model.bank_ab, before_ab, z_ab)):
        torch.testing.assert_close(bank.features[rest], before[rest], rtol=0, atol=0)
        expected = F.normalize(0.8 * before[indices] + 0.2 * z, dim=1)
        torch.testing.assert_close(bank.features[indices], expected, rtol=1e-5, atol=1e-6)


def test_nce_variant_estimates_each_directions_constant_once():
    model = make(loss="nce", nce_z="first_batch")  # the official NCEAverage's Z
    assert not model.z_estimated
    torch.manual_seed(4)
    banks = copy.deepcopy((model.bank_l, model.bank_ab))
    batch = batch_for()
    loss = model(batch).loss
    assert model.z_estimated
    first = model.log_z.clone()
    # Z = mean(exp(logits)) * num_samples over the first batch's N (1 + K) logits of each direction.
    torch.manual_seed(4)
    noise_ab = banks[1].negatives(8, 16)
    noise_l = banks[0].negatives(8, 16)
    z_l, z_ab = features(model, batch.views[0])
    t = model.config.temperature
    pos_l, neg_l = (z_l * banks[1].features[:8]).sum(1) / t, torch.einsum("nd,nkd->nk", z_l, noise_ab) / t
    pos_ab, neg_ab = (z_ab * banks[0].features[:8]).sum(1) / t, torch.einsum("nd,nkd->nk", z_ab, noise_l) / t
    for log_z, (pos, neg) in zip(first, ((pos_l, neg_l), (pos_ab, neg_ab))):
        all_logits = torch.cat([pos[:, None], neg], 1)
        assert log_z.item() == pytest.approx(math.log(all_logits.exp().mean().item() * 64), rel=1e-5)
    expected = nce_loss(pos_l, neg_l, first[0], 64) + nce_loss(pos_ab, neg_ab, first[1], 64)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    model(batch_for(seed=1))
    torch.testing.assert_close(model.log_z, first, rtol=0, atol=0)


def test_nce_variant_under_the_small_image_recipe_estimates_z_from_every_batch():
    model = make(loss="nce")
    assert model.config.nce_z == "every_step"
    for seed in range(2):
        torch.manual_seed(4)
        banks = copy.deepcopy((model.bank_l, model.bank_ab))
        batch = batch_for(seed=seed)
        model(batch)
        torch.manual_seed(4)
        noise_ab, noise_l = banks[1].negatives(8, 16), banks[0].negatives(8, 16)
        z_l, z_ab = features(model, batch.views[0])
        t = model.config.temperature
        for log_z, z, bank, noise in zip(model.log_z, (z_l, z_ab), banks[::-1], (noise_ab, noise_l)):
            logits = torch.cat([(z * bank.features[:8]).sum(1, keepdim=True), torch.einsum("nd,nkd->nk", z, noise)], 1)
            assert log_z.item() == pytest.approx(math.log((logits / t).exp().mean().item() * 64), rel=1e-5)


def test_batch_variant_contrasts_the_other_views_features_of_the_batch():
    model = make(negatives="batch")
    assert not any("bank" in key for key in model.state_dict())
    batch = batch_for()
    loss = model(batch).loss
    z_l, z_ab = features(model, batch.views[0])
    t, targets = model.config.temperature, torch.arange(8)
    expected = F.cross_entropy(z_l @ z_ab.T / t, targets) + F.cross_entropy(z_ab @ z_l.T / t, targets)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    # No stop-gradient: each encoder learns as anchor and as the other's positive and noise.
    for ours, ref in zip(sum(encoder_grads(model, loss), ()), sum(encoder_grads(model, expected), ())):
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-6)


# Evaluation and the data's normalisation


def test_eval_features_are_both_encoders_features_of_the_images_lab():
    model = make().eval()
    x = normalised_images(4)
    out = model.encoder_for_eval()(x)
    pixels = x * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
    lab = normalized_lab(pixels)
    with torch.no_grad():
        expected = torch.cat([model.backbone.encoder_l(lab[:, :1]), model.backbone.encoder_ab(lab[:, 1:])], 1)
    assert out.shape == (4, model.feature_dim)
    torch.testing.assert_close(out, expected)
    # Undoing a different normalisation gives other Lab images, so other features.
    assert not torch.allclose(make(normalization=None).eval().encoder_for_eval()(x), out, atol=1e-3)


def test_checkpoint_built_encoder_undoes_the_runs_normalisation(tmp_path, monkeypatch):
    built = []

    def recording_build(*args, **kwargs):
        built.append(build_method(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(loop, "build_method", recording_build)
    config = build_config(
        "cmc", {"dataset": "synthetic", "backbone": "small", "batch_size": 32, "subset": 64, "epochs": 1, **TINY_HEADS}
    )
    result = pretrain(config, tmp_path)
    trained = built[0].eval()
    state = load_checkpoint(result.checkpoint)
    mean = torch.tensor(state["normalization"]["mean"])
    assert not torch.allclose(mean, torch.zeros(3))
    torch.testing.assert_close(trained.input_mean, mean)
    x = normalised_images(4)
    with torch.no_grad():
        from_run = trained.encoder_for_eval()(x)
        from_checkpoint = build_encoder_from_checkpoint(state).eval()(x)
        torch.testing.assert_close(from_checkpoint, from_run)
        # A checkpoint without a normalisation still loads; its encoder takes images as pixel values.
        del state["normalization"]
        assert not torch.allclose(build_encoder_from_checkpoint(state).eval()(x), from_run, atol=1e-3)


# Views and configuration


def test_one_view_without_colour_augmentation_by_default():
    (spec,) = type(make()).view_specs(make().config, 32)
    assert spec.jitter_p == 0 and spec.grayscale_p == 0 and spec.flip_p == 0.5 and spec.crop_scale == (0.2, 1.0)
    (coloured,) = type(make()).view_specs(make(colour_augmentation=True).config, 32)
    assert coloured.jitter_p > 0 and coloured.grayscale_p > 0


def test_paper_defaults_small_image_recipe_and_rejected_configs():
    paper = build_config("cmc", {"dataset": "stl10"}).method_config
    assert (paper.loss, paper.negatives, paper.num_negatives, paper.temperature, paper.bank_momentum) == (
        "softmax",
        "memory_bank",
        16384,
        0.07,
        0.5,
    )
    assert (paper.base_lr, paper.weight_decay, paper.head_dim, paper.encoder_width, paper.crop_min_scale) == (
        0.06,
        1e-4,
        128,
        0.5,
        0.08,
    )
    small = build_config("cmc", {"dataset": "cifar10"})
    assert small.batch_size == 128 and small.lr == pytest.approx(0.03)
    assert small.method_config.num_negatives == 4096 and small.method_config.temperature == 0.1
    assert small.method_config.negatives == "batch"  # measured better in short runs (BENCHMARKS.md)
    with pytest.raises(ConfigError, match="ViTs"):
        build_config("cmc", {"dataset": "synthetic", "backbone": "vit_tiny"})
    with pytest.raises(ConfigError, match="loss must be one of softmax, nce"):
        build_config("cmc", {"loss": "infonce"})
    with pytest.raises(ConfigError, match="negatives must be one of memory_bank, batch"):
        build_config("cmc", {"negatives": "queue"})

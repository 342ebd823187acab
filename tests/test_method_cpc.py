"""CPC against its defining mechanisms: the context at row i sees rows <= i only, each context
predicts patches k >= 1 rows below it, every patch of the batch is a negative, no batch statistics
anywhere, patch-level augmentation from the global generator, and mean-pooled patch features for
evaluation."""

import pytest
import torch
import torch.nn.functional as F
from tiny import tiny_heads

import cssl_core.methods.cpc as cpc_module
from cssl_core.backbones import has_batch_norm
from cssl_core.config import build_config
from cssl_core.errors import ConfigError
from cssl_core.methods import Batch, build_method
from cssl_core.methods.cpc import CPC, augment_patches, orient, patch_grid, patchify

# The 7 x 7 grid of 32-px images (8-px patches at stride 4), with small heads.
SMALL_HEADS = {key: tiny_heads("cpc")[key] for key in ("context_blocks", "context_dim", "target_dim")}


def make(backbone="small", **overrides):
    torch.manual_seed(0)
    config = build_config("cpc", {"dataset": "synthetic", "backbone": backbone, **SMALL_HEADS, **overrides})
    return build_method(config, 32, 64)


def grid(n=2, dim=256, size=7, seed=0):
    return torch.randn(n, dim, size, size, generator=torch.Generator().manual_seed(seed))


def test_context_at_row_i_sees_only_rows_up_to_i():
    model = make(context_blocks=5)  # the paper's depth: five blocks could reach five rows down
    context = model.heads[0].context
    z = grid()
    c = context(z)
    for row in range(6):
        changed = z.clone()
        changed[:, :, row + 1 :] = torch.randn(changed[:, :, row + 1 :].shape)
        c_changed = context(changed)
        torch.testing.assert_close(c_changed[:, :, : row + 1], c[:, :, : row + 1], rtol=0, atol=0)
        assert not torch.allclose(c_changed[:, :, row + 1], c[:, :, row + 1])
    # The gradient of row 3's context reaches rows 0 to 3 of the grid and no row below.
    z.requires_grad_()
    (g,) = torch.autograd.grad(context(z)[:, :, 3].sum(), z)
    reach = g.abs().sum(dim=(0, 1, 3))
    assert (reach[:4] > 0).all() and (reach[4:] == 0).all()


def test_directions_read_the_grid_from_each_side():
    z = grid(n=1, dim=1, size=3)[0, 0]
    turned = [orient(z[None, None], d)[0, 0] for d in range(4)]
    assert torch.equal(turned[0], z)
    assert torch.equal(turned[1][0], z[2])  # bottom-up: the bottom row is read first
    assert torch.equal(turned[2][0], z[:, 0])  # left-right: the left column first
    assert torch.equal(turned[3][0], z[:, 2])  # right-left: the right column first
    model = make(directions=4)
    assert len(model.heads) == 4 and model.heads[0].context is not model.heads[1].context


def reference_grid_loss(model, z, batch_negatives=True):
    """Each direction's context at (image a, row i, column j) predicts target (a, i + k, j), k from
    min_offset to max_offset; the logits run over every patch of the batch (or of image a only)."""
    total = 0.0
    n, _, size, _ = z.shape
    for direction, head in enumerate(model.heads):
        turned = orient(z, direction)
        context = head.context(turned)
        targets = head.target(turned)  # (N, T, G, G)
        for offset, predictor in zip(model.config.offsets(), head.predictors):
            assert offset >= 1
            predictions = predictor(context) * model.config.prediction_scale
            for a in range(n):
                for i in range(size - offset):
                    for j in range(size):
                        others = targets if batch_negatives else targets[a : a + 1]
                        logits = torch.einsum("t,btrs->brs", predictions[a, :, i, j], others).flatten()
                        positive = ((a if batch_negatives else 0) * size + i + offset) * size + j
                        total = total + F.cross_entropy(logits[None], torch.tensor([positive])) / (
                            n * (size - offset) * size
                        )
    return total


def test_predictions_target_rows_below_and_every_patch_of_the_batch_is_a_negative():
    model = make(directions=2)
    assert list(model.config.offsets()) == [1, 2, 3, 4, 5]
    z = grid()
    loss = model.grid_loss(z)
    torch.testing.assert_close(loss, reference_grid_loss(model, z), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(loss, reference_grid_loss(model, z, batch_negatives=False))

    # Image 0's gradient changes when only image 1 changes: image 1's patches are image 0's negatives.
    def grad_of_image_0(z):
        z = z.clone().requires_grad_()
        return torch.autograd.grad(model.grid_loss(z), z)[0][0]

    other = z.clone()
    other[1] = grid(n=1, seed=5)[0]
    assert not torch.allclose(grad_of_image_0(z), grad_of_image_0(other))
    # No bank or queue, and no running statistics: the state is the parameters alone.
    assert set(model.state_dict()) == {name for name, _ in model.named_parameters()}


@pytest.mark.parametrize("backbone", ["small", "resnet18"])
def test_no_batch_norm_anywhere_and_a_patch_does_not_see_the_others(backbone):
    model = make(backbone)
    assert not has_batch_norm(model)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(m.num_groups == 1 for m in norms)  # layer norm over (C, H, W)
    model.train()
    patches = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    alone = model.backbone(patches[:1])
    together = model.backbone(patches)[:1]
    torch.testing.assert_close(alone, together, rtol=1e-4, atol=1e-5)


def test_eval_features_are_mean_pooled_patch_features(monkeypatch):
    model = make().eval()
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        features = model.encoder_for_eval()(images)
        crops = [images[:, :, 4 * r : 4 * r + 8, 4 * c : 4 * c + 8] for r in range(7) for c in range(7)]
        expected = torch.stack([model.backbone(crop) for crop in crops]).mean(dim=0)
        assert features.shape == (3, model.feature_dim)
        torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-5)
        monkeypatch.setattr(cpc_module, "_EVAL_PIXELS_PER_PASS", 1)  # one image per backbone pass
        torch.testing.assert_close(model.encoder_for_eval()(images), features, rtol=1e-4, atol=1e-5)


def test_patch_grid_defaults_follow_the_image_size():
    config = build_config("cpc", {"dataset": "synthetic"}).method_config
    assert patch_grid(config, 256) == (64, 32, 7)  # v1's grid
    assert [patch_grid(config, s) for s in (32, 96, 224)] == [(8, 4, 7), (24, 12, 7), (56, 28, 7)]
    images = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).reshape(2, 3, 32, 32)
    patches = patchify(images, 8, 4)
    assert patches.shape == (2 * 49, 3, 8, 8)
    assert torch.equal(patches[49 + 7 * 2 + 3], images[1, :, 8:16, 12:20])  # image 1, row 2, column 3


def test_patch_augmentation_drops_colours_per_patch_from_the_global_generator():
    patches = torch.randn(200, 3, 8, 8, generator=torch.Generator().manual_seed(3)) + 5  # no zeros of its own
    torch.manual_seed(0)
    dropped = augment_patches(patches, crop_scale=1.0, color_drop_p=1.0)
    kept = dropped.flatten(2).abs().sum(dim=2) > 0  # (200, 3)
    assert (kept.sum(dim=1) == 1).all() and kept.any(dim=0).all()  # one channel each, every channel kept somewhere
    torch.testing.assert_close(dropped[kept], patches[kept])
    torch.manual_seed(0)
    first, second = augment_patches(patches, 0.5, 1.0), augment_patches(patches, 0.5, 1.0)
    torch.manual_seed(0)
    assert torch.equal(augment_patches(patches, 0.5, 1.0), first) and not torch.equal(first, second)
    assert not torch.equal(augment_patches(patches, 0.5, 0.0), patches)  # sub-crops resized back

    model = make()
    view = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    batch = Batch(views=[view], indices=torch.arange(2), step=0, epoch=0, schedules={"lr": 0.1, "weight_decay": 0.0})
    torch.manual_seed(7)
    first = model(batch).loss
    torch.manual_seed(7)
    assert torch.equal(model(batch).loss, first)
    assert not torch.equal(model(batch).loss, first)


def test_paper_values_and_one_view_per_image():
    paper = build_config("cpc", {"dataset": "synthetic", "recipe": "paper"})
    mc = paper.method_config
    assert (mc.optimizer, mc.base_lr, mc.weight_decay) == ("adamw", 4e-4, 0.0)
    assert (mc.directions, mc.min_offset, mc.max_offset, mc.target_dim, mc.prediction_scale) == (4, 1, 5, 64, 0.1)
    assert (mc.context_blocks, mc.context_dim, mc.color_drop_p) == (5, 256, 1.0)
    assert len(CPC.view_specs(mc, 32)) == 1
    small = build_config("cpc", {"dataset": "synthetic"})  # the measured small-image recipe
    assert (small.batch_size, small.method_config.directions) == (32, 2)


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"min_offset": 0}, "min_offset"),
        ({"min_offset": 3, "max_offset": 2}, "min_offset"),
        ({"max_offset": 7}, "max_offset"),  # a 7-row grid has offsets up to 6
        ({"directions": 5}, "directions"),
        ({"norm": "gn_ws"}, "layer norm"),
        ({"patch_size": 40}, "patch_size"),
        ({"color_drop_p": 1.5}, "color_drop_p"),
        ({"target_dim": 0}, "target_dim"),
    ],
)
def test_config_rejects_what_cannot_train(overrides, key):
    with pytest.raises(ConfigError, match=key):
        build_config("cpc", {"dataset": "synthetic", **overrides})

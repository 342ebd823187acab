"""InvaSpread against its defining mechanisms: the negatives are the batch's own features (no memory
bank or queue), the positive is the image's other augmentation, and both augmentations get a
gradient (no stop-gradient on either side)."""

import pytest
import torch
from tiny import tiny_heads

from cssl_core.config import build_config
from cssl_core.errors import ConfigError
from cssl_core.losses import invaspread_loss
from cssl_core.methods import Batch, build_method

TINY_HEADS = tiny_heads("invaspread")
BN_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


def make(**overrides):
    torch.manual_seed(0)
    config = build_config("invaspread", {"dataset": "synthetic", "backbone": "small", **TINY_HEADS, **overrides})
    return build_method(config, 32, 64)


def batch_of(x1, x2):
    return Batch(
        views=[x1, x2], indices=torch.arange(len(x1)), step=0, epoch=0, schedules={"lr": 0.1, "weight_decay": 0.0}
    )


def views(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randn(n, 3, 32, 32, generator=g)


def embeddings(model, x1, x2):
    z = model.head(model.backbone(torch.cat([x1, x2])))
    return z[: len(x1)], z[len(x1) :]


def test_negatives_come_only_from_the_batch():
    model = make()
    # No bank or queue: the state a step could carry to the next is BatchNorm's statistics alone.
    parameters = {name for name, _ in model.named_parameters()}
    assert all(key.endswith(BN_STATISTICS) for key in model.state_dict() if key not in parameters)
    model.eval()  # BN on running statistics: a sample's features depend on that sample alone
    x1, x2 = views()
    loss = model(batch_of(x1, x2)).loss
    model(batch_of(*views(seed=1)))  # a step on another batch leaves nothing behind
    assert torch.equal(model(batch_of(x1, x2)).loss, loss)

    # Sample 0's gradient changes when only sample 5, one of its negatives, changes.
    def grad_of_sample_0(x1, x2):
        x1 = x1.clone().requires_grad_()
        (g,) = torch.autograd.grad(model(batch_of(x1, x2)).loss, x1)
        return g[0]

    y1, y2 = x1.clone(), x2.clone()
    y1[5], y2[5] = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    assert not torch.allclose(grad_of_sample_0(x1, x2), grad_of_sample_0(y1, y2), rtol=1e-3, atol=1e-7)
    # ... and stays put when nothing changes.
    torch.testing.assert_close(grad_of_sample_0(x1, x2), grad_of_sample_0(x1.clone(), x2.clone()))


def test_the_positive_is_the_images_other_augmentation():
    model = make()
    x1, x2 = views()
    loss = model(batch_of(x1, x2)).loss
    z1, z2 = embeddings(model, x1, x2)
    torch.testing.assert_close(loss, invaspread_loss(z1, z2, model.config.temperature))
    assert not torch.allclose(loss, invaspread_loss(z1, z2.roll(1, 0), model.config.temperature))
    # Views that agree give a lower loss than the same views paired with another image's.
    same = model(batch_of(x1, x1.clone())).loss
    swapped = model(batch_of(x1, x1.roll(1, 0))).loss
    assert same < swapped


@pytest.mark.parametrize("side", [0, 1])
def test_both_augmentations_get_a_gradient(side):
    model = make().eval()  # BN on running statistics, or batch statistics would carry a gradient across views
    x1, x2 = (x.requires_grad_() for x in views())
    model(batch_of(x1, x2)).loss.backward()
    grad = (x1, x2)[side].grad
    assert grad is not None and (grad.flatten(1).abs().sum(1) > 0).all()  # every image of that view
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.head.parameters())


def test_paper_values_and_small_image_recipe():
    paper = build_config("invaspread", {"dataset": "synthetic", "recipe": "paper"})
    mc = paper.method_config
    assert (mc.optimizer, mc.base_lr, mc.weight_decay, mc.sgd_momentum) == ("sgd", 0.06, 5e-4, 0.9)
    assert (mc.temperature, mc.embedding_dim, mc.augmentation, mc.warmup_epochs) == (0.1, 128, "mocov1", 0.0)
    small = build_config("invaspread", {"dataset": "synthetic"})
    assert small.batch_size == 128 and small.lr == pytest.approx(0.03)  # the official lr at the official batch
    model = make()
    assert model.head.out_features == model.config.embedding_dim


@pytest.mark.parametrize("key", ["temperature", "embedding_dim"])
def test_config_rejects_what_cannot_train(key):
    with pytest.raises(ConfigError, match=key):
        build_config("invaspread", {"dataset": "synthetic", key: 0})

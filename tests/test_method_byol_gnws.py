"""BYOL without batch statistics: no BatchNorm left anywhere, so one sample's loss term and outputs
do not depend on the rest of the batch (the check fails when a single BatchNorm is put back)."""

import pytest
import torch
from tiny import tiny_heads
from torch import nn

import cssl_core.methods.byol_gnws  # noqa: F401 (registers it)
from cssl_core.backbones import has_batch_norm
from cssl_core.backbones.norm import WSConv2d
from cssl_core.config import build_config
from cssl_core.errors import ConfigError
from cssl_core.methods import Batch, build_method, get_method
from cssl_core.methods.byol import BYOL, BYOLConfig
from cssl_core.train.optim import build_optimizer

TINY_HEADS = tiny_heads("byol_gnws")


def make(**overrides):
    torch.manual_seed(0)
    config = build_config("byol_gnws", {"dataset": "synthetic", "backbone": "small", **TINY_HEADS, **overrides})
    model = build_method(config, 32, 64).train()
    with torch.no_grad():  # a target that differs from the online network
        for p in model.target.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model, config


def images(n, seed):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def batch_of(x1, x2, momentum=0.99):
    schedules = {"lr": 0.1, "weight_decay": 0.0, "momentum": momentum}
    return Batch(views=[x1, x2], indices=torch.arange(len(x1)), step=0, epoch=0, schedules=schedules)


def first_sample_outputs(model, x):
    """Sample 0's prediction and target projection, from a batch x of several images."""
    with torch.no_grad():
        return model.predictor(model.online(x))[0], model.target(x)[0]


def depends_on_the_rest_of_the_batch(model):
    x = images(6, seed=0)
    y = x.clone()
    y[1:] = images(5, seed=1)  # the same first image among other ones
    return any(
        not torch.allclose(a, b, atol=1e-5)
        for a, b in zip(first_sample_outputs(model, x), first_sample_outputs(model, y))
    )


def test_is_byol_under_its_own_name_with_gn_ws_by_default():
    assert get_method("byol_gnws") is not BYOL and issubclass(get_method("byol_gnws"), BYOL)
    assert get_method("byol") is BYOL
    config = build_config("byol_gnws", {"dataset": "stl10"})
    assert config.method_config.norm == "gn_ws"
    assert build_config("byol", {"dataset": "stl10"}).method_config.norm == "bn"
    assert get_method("byol_gnws").config_cls.small_image_recipe == BYOLConfig.small_image_recipe
    with pytest.raises(ConfigError, match="needs norm='gn_ws'.*use method 'byol'"):
        build_config("byol_gnws", {"norm": "bn"})


def test_no_batch_norm_anywhere():
    model, _ = make()
    for part in (model.online, model.target, model.predictor, model.backbone, model):
        assert not has_batch_norm(part)
    for part in (model.online, model.target, model.predictor):
        assert any(isinstance(m, nn.GroupNorm) for m in part.modules())
    for part in (model.online, model.target):
        convs = [m for m in part.modules() if isinstance(m, nn.Conv2d)]
        assert convs and all(isinstance(m, WSConv2d) for m in convs)
    assert model.online[0] is model.backbone and model.online[1] is model.projector  # still shared
    assert not {id(p) for p in model.online.parameters()} & {id(p) for p in model.target.parameters()}


def test_a_sample_does_not_depend_on_the_rest_of_the_batch():
    model, _ = make()
    assert not depends_on_the_rest_of_the_batch(model)
    # The loss is the mean of each sample's loss computed alone.
    x1, x2 = images(6, seed=2), images(6, seed=3)
    with torch.no_grad():
        loss = model(batch_of(x1, x2)).loss
        alone = torch.stack([model(batch_of(x1[i : i + 1], x2[i : i + 1])).loss for i in range(6)])
    torch.testing.assert_close(loss, alone.mean())


@pytest.mark.parametrize("where", ["predictor", "target projector", "backbone"])
def test_the_batch_independence_check_finds_a_batch_norm_left(where):
    model, _ = make()
    if where == "predictor":
        model.predictor[1] = nn.BatchNorm1d(model.predictor[1].num_channels)
    elif where == "target projector":
        model.target[1][1] = nn.BatchNorm1d(model.target[1][1].num_channels)
    else:
        model.backbone[0][1] = nn.BatchNorm2d(model.backbone[0][1].num_channels)
    assert depends_on_the_rest_of_the_batch(model.train())


def test_one_step_trains():
    model, config = make()
    optimizer = build_optimizer(model.parameter_groups(), config)
    x1, x2 = images(8, seed=4), images(8, seed=5)
    weights = {name: p.clone() for name, p in model.named_parameters()}
    out = model(batch_of(x1, x2, momentum=0.9))
    assert torch.isfinite(out.loss)
    optimizer.zero_grad()
    out.loss.backward()
    online = [p for p in model.online.parameters()] + list(model.predictor.parameters())
    assert all(p.grad is not None for p in online) and all(p.grad is None for p in model.target.parameters())
    assert any(p.grad.abs().sum() > 0 for p in model.backbone.parameters())
    optimizer.step()
    model.after_step(batch_of(x1, x2, momentum=0.9))
    params = dict(model.named_parameters())
    assert all(not torch.equal(weights[n], params[n]) for n in weights if n.startswith(("backbone.", "predictor.")))
    for (name, t), o in zip(model.target.named_parameters(), model.online.parameters()):
        torch.testing.assert_close(t, 0.9 * weights[f"target.{name}"] + 0.1 * o)

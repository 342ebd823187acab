import copy

import pytest
import torch

from cssl_core.backbones import build_backbone
from cssl_core.config import build_config
from cssl_core.errors import ConfigError
from cssl_core.methods import get_method, method_names

SMALL_HEADS = {
    "simclr": {},
    "mocov2": {"queue_size": 64},
    "mocov1": {"queue_size": 64},
    "byol": {"projector_hidden_dim": 64, "predictor_hidden_dim": 64},
    "simsiam": {"projector_dim": 64, "predictor_hidden_dim": 16},
    "barlow_twins": {"projector_dim": 64},
}


def make(name, **overrides):
    config = build_config(name, {"backbone": "small", **SMALL_HEADS[name], **overrides})
    backbone, dim = build_backbone("small", 32)
    return get_method(name)(backbone, dim, config.method_config)


def test_every_registered_method_is_covered():
    assert sorted(SMALL_HEADS) == method_names()


@pytest.mark.parametrize("name", sorted(SMALL_HEADS))
def test_one_step_trains_the_backbone(name):
    torch.manual_seed(0)
    model = make(name)
    views = [torch.randn(8, 3, 32, 32), torch.randn(8, 3, 32, 32)]
    out = model(views)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for p in model.backbone.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", ["mocov2", "byol"])
def test_momentum_encoder_follows_the_online_one(name):
    model = make(name)
    target = model.encoder_k if name == "mocov2" else model.target
    online = model.encoder_q if name == "mocov2" else model.online
    assert all(not p.requires_grad for p in target.parameters())
    with torch.no_grad():
        for p in online.parameters():
            p.add_(1.0)
    before = copy.deepcopy(list(target.parameters()))
    model.momentum_update(0.9)
    for b, t, o in zip(before, target.parameters(), online.parameters()):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * o)


def test_moco_queue_is_a_ring_of_the_latest_keys():
    model = make("mocov2", queue_size=20)
    for _ in range(3):
        model([torch.randn(8, 3, 32, 32), torch.randn(8, 3, 32, 32)])
    assert model.queue_ptr.item() == 24 % 20
    assert torch.allclose(model.queue.norm(dim=1), torch.ones(20), atol=1e-5)


def test_simsiam_predictor_has_its_own_fixed_lr_group():
    groups = make("simsiam").parameter_groups()
    assert [g["name"] for g in groups][-1] == "predictor" and groups[-1]["fixed_lr"]
    counted = sum(len(g["params"]) for g in groups)
    assert counted == len([p for p in make("simsiam").parameters()])


def test_config_validation_names_what_to_fix():
    with pytest.raises(ConfigError, match="known methods: barlow_twins, byol"):
        build_config("nope")
    with pytest.raises(ConfigError, match="valid options: .*temperature"):
        build_config("simclr", {"temprature": 0.1})
    with pytest.raises(ConfigError, match="epochs must be of type int"):
        build_config("simclr", {"epochs": "ten"})
    with pytest.raises(ConfigError, match="optimizer must be one of"):
        build_config("simclr", {"optimizer": "rmsprop"})
    with pytest.raises(ConfigError, match="jitter_strength must be zero or positive"):
        build_config("simclr", {"jitter_strength": -0.5})
    config = build_config("simclr", {"epochs": "3", "time_budget": "none", "channels_last": "false"})
    assert config.epochs == 3 and config.time_budget is None and config.channels_last is False
    assert build_config("simclr", config.to_dict()) == config

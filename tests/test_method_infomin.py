"""InfoMin against its definition: MoCo v2's mechanism on views from the InfoMin preset, whose
RandAugment is what sets it apart from MoCo v2. The queue's keys and pre-batch negatives are
checked with MoCo v2's in tests/test_methods.py (test_moco_enqueues_the_keys_not_the_queries)."""

import copy

import pytest
import torch
from tiny import tiny_heads

from cssl_core.augment import preset_views
from cssl_core.config import build_config
from cssl_core.methods import Batch, build_method
from cssl_core.methods.infomin import InfoMin
from cssl_core.methods.moco import MoCoV2, MoCoV2Config

TINY_HEADS = tiny_heads("infomin")


def make(**overrides):
    torch.manual_seed(0)
    config = build_config("infomin", {"dataset": "synthetic", "backbone": "small", **TINY_HEADS, **overrides})
    return build_method(config, 32, 64)


def batch_for(model, n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    views = [torch.randn(n, 3, spec.size, spec.size, generator=g) for spec in InfoMin.view_specs(model.config, 32)]
    schedules = {"lr": 0.1, "weight_decay": 0.0, "momentum": float(model.schedules(10, 5)["momentum"][0])}
    return Batch(views=views, indices=torch.arange(n), step=0, epoch=0, schedules=schedules)


@pytest.mark.parametrize("image_size", [32, 96])
def test_views_come_from_the_infomin_preset(image_size):
    config = build_config("infomin", {"dataset": "synthetic"}).method_config
    specs = InfoMin.view_specs(config, image_size)
    assert specs == preset_views("infomin", image_size)
    randaugment = [(s.randaugment_ops, s.randaugment_magnitude, s.randaugment_magnitude_std) for s in specs]
    assert randaugment == [(2, 10, 0.5)] * 2
    # The same model fed MoCo v2's views would be MoCo v2: the preset is what differs.
    assert specs != MoCoV2.view_specs(MoCoV2Config(), image_size)


def test_paper_defaults_and_moco_v2s_small_image_recipe():
    paper = build_config("infomin", {"dataset": "stl10"})
    mc = paper.method_config
    assert paper.recipe == "paper" and paper.batch_size == 256
    assert (mc.temperature, mc.queue_size, mc.momentum, mc.head_dim, mc.mlp_head) == (0.15, 65536, 0.999, 128, True)
    assert (mc.optimizer, mc.base_lr, mc.weight_decay, mc.warmup_epochs) == ("sgd", 0.03, 1e-4, 0.0)
    assert (mc.symmetric, mc.augmentation) == (False, "infomin")
    small = build_config("infomin", {"dataset": "cifar10"})
    mocov2 = build_config("mocov2", {"dataset": "cifar10"})
    assert small.batch_size == mocov2.batch_size == 128
    assert (small.method_config.queue_size, small.method_config.symmetric) == (4096, True)
    assert small.method_config.momentum == mocov2.method_config.momentum == 0.99
    assert small.method_config.augmentation == "infomin" and small.method_config.temperature == 0.15


def test_the_key_encoder_is_a_moving_average_of_the_query_encoder():
    model = make()
    assert all(not p.requires_grad for p in model.encoder_k.parameters())
    with torch.no_grad():
        for p in model.encoder_q.parameters():
            p.add_(1.0)
    before = copy.deepcopy(list(model.encoder_k.parameters()))
    batch = batch_for(model)
    assert batch.schedules["momentum"] == pytest.approx(model.config.momentum)
    batch.schedules["momentum"] = 0.9
    model.after_step(batch)
    for b, k, q in zip(before, model.encoder_k.parameters(), model.encoder_q.parameters()):
        torch.testing.assert_close(k, 0.9 * b + 0.1 * q)

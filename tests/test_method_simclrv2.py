"""SimCLR v2 against its mechanisms: fine-tuning starts from the projector's first layer, and the
optional memory holds a momentum encoder's keys, used as negatives before this batch joins it."""

import pytest
import torch
import torch.nn.functional as F
from tiny import tiny_heads

from cssl_core.config import build_config
from cssl_core.errors import ConfigError
from cssl_core.losses import nt_xent
from cssl_core.methods import Batch, build_method


def make(**overrides):
    torch.manual_seed(0)
    heads = tiny_heads("simclrv2")
    config = build_config("simclrv2", {"dataset": "synthetic", "backbone": "small", **heads, **overrides})
    return build_method(config, 32, 64)


def batch(n=8, seed=0, momentum=0.99):
    g = torch.Generator().manual_seed(seed)
    views = [torch.randn(n, 3, 32, 32, generator=g) for _ in range(2)]
    return Batch(
        views=views,
        indices=torch.arange(n),
        step=0,
        epoch=0,
        schedules={"lr": 0.1, "weight_decay": 0.0, "memory_momentum": momentum},
    )


def test_finetuning_starts_from_the_projectors_first_layer():
    model = make().eval()
    x = batch().views[0]
    first = model.projector[0:3]
    assert isinstance(first[0], torch.nn.Linear) and isinstance(first[2], torch.nn.ReLU)
    encoder = model.encoder_for_finetune()
    torch.testing.assert_close(encoder(x), first(model.backbone(x)))
    # The same modules, not copies: fine-tuning trains the pretrained weights.
    assert {id(p) for p in encoder.parameters()} == {id(p) for p in model.backbone.parameters()} | {
        id(p) for p in first.parameters()
    }
    assert model.encoder_for_eval() is model.backbone


def test_default_is_the_papers_three_layer_projector_without_memory():
    model = make()
    assert sum(isinstance(m, torch.nn.Linear) for m in model.projector) == 3
    assert not hasattr(model, "memory")
    with pytest.raises(ConfigError, match="projector_layers"):
        make(projector_layers=1)


def test_memory_negatives_come_before_the_batch_joins_them():
    model = make(memory_size=32).train()
    b = batch()
    before = model.memory.clone()
    out = model(b)
    # The loss is NT-Xent with the pre-batch memory as extra negatives.
    z = model.projector(model.backbone(torch.cat(b.views)))
    # BN in train mode: recompute on the same inputs gives the same projections.
    expected = nt_xent(z[:8], z[8:], model.config.temperature, memory=before)
    torch.testing.assert_close(out.loss, expected)
    assert not torch.allclose(out.loss, nt_xent(z[:8], z[8:], model.config.temperature))


def test_memory_holds_the_momentum_encoders_keys_of_both_views():
    model = make(memory_size=32).train()
    # Make the momentum encoder differ from the online one, as after some steps.
    with torch.no_grad():
        for p in model.memory_encoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    b = batch()
    with torch.no_grad():
        keys = F.normalize(model.memory_encoder(torch.cat(b.views)).float(), dim=1)
        online = F.normalize(model.projector(model.backbone(torch.cat(b.views))).float(), dim=1)
    model(b)
    torch.testing.assert_close(model.memory[:16], keys)
    assert not torch.allclose(model.memory[:16], online, atol=1e-3)
    assert int(model.memory_ptr) == 16
    assert not any(p.requires_grad for p in model.memory_encoder.parameters())


def test_memory_encoder_follows_the_online_one_by_ema():
    model = make(memory_size=32)
    online = dict(torch.nn.Sequential(model.backbone, model.projector).named_parameters())
    with torch.no_grad():
        for p in model.memory_encoder.parameters():
            p.zero_()
    model.after_step(batch(momentum=0.9))
    for name, p in model.memory_encoder.named_parameters():
        torch.testing.assert_close(p, 0.1 * online[name].detach())

"""MoCo v3 against its defining mechanisms: each test fails when one is removed (the stop-gradient
on keys, the symmetrised loss, the predictor on the query side only, the cosine-raised EMA)."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from tiny import stop_after, tiny_heads

import cssl_core.methods.mocov3  # noqa: F401 (registers it)
from cssl_core.backbones import VisionTransformer
from cssl_core.backbones.vit import sincos_position_embedding
from cssl_core.config import build_config, rebuild_config
from cssl_core.errors import ConfigError
from cssl_core.losses import mocov3_loss
from cssl_core.methods import Batch, build_method
from cssl_core.train import load_checkpoint, pretrain
from cssl_core.train.checkpoint import build_encoder_from_checkpoint, export_backbone
from cssl_core.train.optim import build_optimizer

TINY_HEADS = tiny_heads("mocov3")


def make(num_samples=64, **overrides):
    torch.manual_seed(0)
    config = build_config("mocov3", {"dataset": "synthetic", "backbone": "small", **TINY_HEADS, **overrides})
    return build_method(config, 32, num_samples).train()


def batch_for(model, n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    views = [torch.randn(n, 3, 32, 32, generator=g) for _ in range(2)]
    schedules = {"lr": 0.1, "weight_decay": 0.0, "momentum": float(model.schedules(10, 5)["momentum"][0])}
    return Batch(views=views, indices=torch.arange(n), step=0, epoch=0, schedules=schedules)


def perturb_momentum_encoder(model):
    with torch.no_grad():  # keys from weights other than the queries'
        for p in model.momentum_encoder.parameters():
            p.add_(0.05 * torch.randn_like(p))


def ctr(q, k, t, stop_gradient=True):
    """The official contrastive_loss written out; ``stop_gradient=False`` lets gradients reach k."""
    q, k = F.normalize(q, dim=1), F.normalize(k.detach() if stop_gradient else k, dim=1)
    return F.cross_entropy(q @ k.T / t, torch.arange(len(q))) * (2 * t)


def backbone_grads(model, loss):
    params = [p for p in model.backbone.parameters() if p.requires_grad]
    return torch.autograd.grad(loss, params, retain_graph=True)


def test_keys_get_no_gradient():
    model = make()
    batch = batch_for(model)
    x1, x2 = batch.views
    loss = model(batch).loss
    grads = backbone_grads(model, loss)
    t = model.config.temperature
    q1, q2 = model.predictor(model.base_encoder(x1)), model.predictor(model.base_encoder(x2))
    # At init the momentum encoder equals the base encoder, so keys from the base encoder have the
    # same values: only the stop-gradient tells the two references apart.
    z1, z2 = model.base_encoder(x1), model.base_encoder(x2)
    detached = ctr(q1, z2, t) + ctr(q2, z1, t)
    through_keys = ctr(q1, z2, t, stop_gradient=False) + ctr(q2, z1, t, stop_gradient=False)
    torch.testing.assert_close(loss, through_keys)
    for a, b in zip(grads, backbone_grads(model, detached)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    without_stop = backbone_grads(model, through_keys)
    assert any(not torch.allclose(a, b, rtol=1e-3, atol=1e-6) for a, b in zip(grads, without_stop))
    loss.backward()
    assert all(not p.requires_grad and p.grad is None for p in model.momentum_encoder.parameters())


def test_both_views_are_query_and_key():
    model = make()
    perturb_momentum_encoder(model)
    batch = batch_for(model)
    loss = model(batch).loss
    x1, x2 = batch.views
    t = model.config.temperature
    with torch.no_grad():
        q1, q2 = model.predictor(model.base_encoder(x1)), model.predictor(model.base_encoder(x2))
        k1, k2 = model.momentum_encoder(x1), model.momentum_encoder(x2)
    torch.testing.assert_close(loss, ctr(q1, k2, t) + ctr(q2, k1, t))
    torch.testing.assert_close(loss, mocov3_loss(q1, q2, k1, k2, t))
    swapped = Batch(views=[x2, x1], indices=batch.indices, step=0, epoch=0, schedules=batch.schedules)
    torch.testing.assert_close(model(swapped).loss, loss)
    for one_term in (ctr(q1, k2, t), ctr(q2, k1, t), 2 * ctr(q1, k2, t)):
        assert not torch.allclose(loss, one_term, atol=1e-4)
    assert not torch.allclose(loss, ctr(q1, k1, t) + ctr(q2, k2, t), atol=1e-4)  # each key from the other view


def test_predictor_is_on_the_query_side_only():
    model = make()
    perturb_momentum_encoder(model)
    predictor = {id(p) for p in model.predictor.parameters()}
    assert not predictor & {id(p) for p in model.momentum_encoder.parameters()}
    shapes = [p.shape for p in model.base_encoder.parameters()]
    assert [p.shape for p in model.momentum_encoder.parameters()] == shapes  # backbone + projector only
    batch = batch_for(model)
    loss = model(batch).loss
    x1, x2 = batch.views
    t = model.config.temperature
    with torch.no_grad():
        z1, z2 = model.base_encoder(x1), model.base_encoder(x2)
        k1, k2 = model.momentum_encoder(x1), model.momentum_encoder(x2)
        p1, p2 = model.predictor(z1), model.predictor(z2)
        assert not torch.allclose(loss, mocov3_loss(z1, z2, k1, k2, t), atol=1e-4)  # no predictor
        keys_predicted = mocov3_loss(p1, p2, model.predictor(k1), model.predictor(k2), t)
        assert not torch.allclose(loss, keys_predicted, atol=1e-4)  # predictor on both sides
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.predictor.parameters())


def test_heads_follow_the_official_builder():
    model = make(recipe="paper")  # the paper's values on a convnet: MoCo_ResNet's heads
    mc = model.config
    assert (mc.optimizer, mc.base_lr, mc.weight_decay, mc.temperature, mc.crop_min_scale) == (
        "lars",
        0.6,
        1e-6,
        1.0,
        0.2,
    )
    assert (mc.projector_layers, mc.predictor_last_bn) == (2, False)
    out_bn = model.projector[-1]
    assert isinstance(out_bn, torch.nn.BatchNorm1d) and not out_bn.affine
    assert len([m for m in model.projector if isinstance(m, torch.nn.Linear)]) == 2
    assert all(m.bias is None for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert isinstance(model.predictor[-1], torch.nn.Linear)


def test_momentum_rises_from_0_99_to_one_along_a_cosine():
    m = make().schedules(101, 10)["momentum"]
    assert m[0] == pytest.approx(0.99) and m[-1] > 0.99999 and all(m[1:] >= m[:-1])
    k = 50  # the official adjust_moco_momentum at epoch fraction k/K
    assert m[k] == pytest.approx(1 - 0.5 * (1 + math.cos(math.pi * k / 101)) * (1 - 0.99))


def test_momentum_encoder_is_an_ema_of_the_base_encoder():
    model = make()
    with torch.no_grad():
        for p in model.base_encoder.parameters():
            p.add_(1.0)
        model.base_encoder(torch.randn(4, 3, 32, 32))  # new BN running statistics
    before = copy.deepcopy(list(model.momentum_encoder.parameters()))
    batch = batch_for(model)
    batch.schedules["momentum"] = 0.9
    model.after_step(batch)
    for b, t, o in zip(before, model.momentum_encoder.parameters(), model.base_encoder.parameters()):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * o)
    for t, o in zip(model.momentum_encoder.buffers(), model.base_encoder.buffers()):
        assert torch.equal(t, o)


def test_vit_tiny_uses_adamw_and_the_frozen_patch_projection():
    torch.manual_seed(0)
    config = build_config("mocov3", {"dataset": "synthetic", "backbone": "vit_tiny", **TINY_HEADS})
    mc = config.method_config
    assert (mc.optimizer, mc.base_lr, mc.weight_decay, mc.warmup_epochs) == ("adamw", 1.5e-4, 0.1, 40.0)
    assert (mc.temperature, mc.frozen_patch_embed, mc.projector_layers, mc.predictor_last_bn) == (0.2, True, 3, True)
    model = build_method(config, 32, 64).train()
    assert isinstance(model.backbone, VisionTransformer)
    assert len([m for m in model.projector if isinstance(m, torch.nn.Linear)]) == 3
    assert isinstance(model.predictor[-1], torch.nn.BatchNorm1d) and not model.predictor[-1].affine
    patch = list(model.backbone.patch_embed.parameters())
    optimizer = build_optimizer(model.parameter_groups(), config)
    assert isinstance(optimizer, torch.optim.AdamW)
    trained = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert not trained & {id(p) for p in patch}
    before = [p.clone() for p in patch]
    blocks_before = model.backbone.blocks[0].attn.qkv.weight.clone()
    model(batch_for(model, n=4)).loss.backward()
    optimizer.step()
    assert all(torch.equal(b, p) for b, p in zip(before, patch))
    assert not torch.equal(blocks_before, model.backbone.blocks[0].attn.qkv.weight)


def test_config_is_checked():
    with pytest.raises(ConfigError, match="frozen_patch_embed applies to ViT backbones"):
        build_config("mocov3", {"backbone": "resnet18", "frozen_patch_embed": True})
    with pytest.raises(ConfigError, match="position_embedding applies to ViT backbones"):
        build_config("mocov3", {"backbone": "resnet18", "position_embedding": "sincos"})
    with pytest.raises(ConfigError, match="vit_num_heads applies to ViT backbones"):
        build_config("mocov3", {"backbone": "resnet18", "vit_num_heads": 12})
    with pytest.raises(ConfigError, match="position_embedding must be one of learned, sincos, got 'rope'"):
        build_config("mocov3", {"backbone": "vit_tiny", "position_embedding": "rope"})
    with pytest.raises(ConfigError, match="its number of heads must divide 192, got 7"):
        build_config("mocov3", {"backbone": "vit_tiny", "vit_num_heads": 7})
    with pytest.raises(ConfigError, match="temperature must be greater than 0, got 0.0"):
        build_config("mocov3", {"temperature": 0})
    small = build_config("mocov3", {"dataset": "cifar10"})
    assert small.recipe == "small_images" and small.batch_size == 128 and small.method_config.temperature == 0.2
    assert build_config("mocov3", small.to_dict()) == small


def test_vit_is_the_official_vits():
    # vits.py: fixed 2-D sin-cos position embedding, 12 heads (vit_small: 384 wide, 12 deep).
    config = build_config("mocov3", {"dataset": "synthetic", "backbone": "vit_small", **TINY_HEADS})
    assert (config.method_config.vit_num_heads, config.method_config.position_embedding) == (12, "sincos")
    model = build_method(config, 32, 64).train()
    vit = model.backbone
    assert (vit.embed_dim, len(vit.blocks), vit.num_heads) == (384, 12, 12)
    assert "backbone.pos_embed" not in dict(model.named_parameters())
    torch.testing.assert_close(vit.pos_embed, sincos_position_embedding(8, 8, 384))
    assert torch.equal(model.momentum_encoder[0].pos_embed, vit.pos_embed)
    # The learned embedding and DeiT's heads stay available.
    deit = build_config(
        "mocov3",
        {"dataset": "synthetic", "backbone": "vit_small", "vit_num_heads": None, "position_embedding": "learned"},
    )
    vit = build_method(deit, 32, 64).backbone
    assert vit.num_heads == 6 and isinstance(vit.pos_embed, torch.nn.Parameter)


def test_vit_checkpoint_rebuilds_its_heads_and_position_embedding(tmp_path):
    config = build_config(
        "mocov3",
        {"dataset": "synthetic", "backbone": "vit_tiny", "batch_size": 8, "subset": 16, "epochs": 1, **TINY_HEADS},
    )
    result = pretrain(config, tmp_path, should_stop=stop_after(1))
    state = load_checkpoint(result.checkpoint)
    encoder = build_encoder_from_checkpoint(state).eval()
    assert (encoder.num_heads, encoder.position_embedding) == (12, "sincos")
    torch.manual_seed(0)
    model = build_method(config, 32, 16)
    model.load_state_dict(state["model"])
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(encoder(x), model.encoder_for_eval().eval()(x))
    exported = torch.load(export_backbone(result.checkpoint, tmp_path / "vit.pt"), weights_only=True)
    torch.testing.assert_close(exported["pos_embed"], sincos_position_embedding(8, 8, 192))
    # A checkpoint from before these keys existed holds DeiT's ViT: learned embedding, 3 heads.
    old = {k: v for k, v in state["config"].items() if k not in ("vit_num_heads", "position_embedding")}
    assert (rebuild_config(old).method_config.vit_num_heads, rebuild_config(old).method_config.position_embedding) == (
        None,
        "learned",
    )

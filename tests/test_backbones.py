"""Backbones: shapes for every registered name, torchvision key compatibility, the ViT's patch
rule, position-embedding interpolation, frozen patch projection and CLS attention maps (checked
against a float64 loop over heads), and GroupNorm + weight standardisation."""

import math

import pytest
import torch
import torchvision
from torch import nn

from cssl_core.backbones import (
    BACKBONES,
    CIFAR_STEM_MAX_SIZE,
    BackboneSpec,
    SmallConvNet,
    ViTOptions,
    backbone_names,
    build_backbone,
    convert_to_gn_ws,
    disable_drop_path,
    has_batch_norm,
    vit_patch_size,
)
from cssl_core.backbones.norm import GN_GROUPS, WSConv2d, group_count
from cssl_core.backbones.vit import DropPath
from cssl_core.errors import ConfigError


def _images(n, size, seed=0, width=None):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, width or size, generator=g)


def _vit(name="vit_tiny", size=32, **kwargs):
    torch.manual_seed(0)
    return build_backbone(name, size, **kwargs)[0].eval()


# Registry


def test_registry_names_and_exports():
    assert backbone_names() == ["resnet18", "resnet50", "small", "vit_small", "vit_tiny"]
    assert all(isinstance(spec, BackboneSpec) and spec.name == name for name, spec in BACKBONES.items())
    assert CIFAR_STEM_MAX_SIZE == 64
    assert isinstance(build_backbone("small", 32)[0], SmallConvNet)


@pytest.mark.parametrize(
    "name, dim", [("resnet18", 512), ("resnet50", 2048), ("small", 256), ("vit_tiny", 192), ("vit_small", 384)]
)
def test_output_shape_at_32px(name, dim):
    net, feature_dim = build_backbone(name, 32)
    assert feature_dim == dim
    with torch.no_grad():
        assert net.eval()(_images(2, 32)).shape == (2, dim)


def test_vit_output_shape_at_64px():
    net, dim = build_backbone("vit_small", 64)
    assert net.patch_size == 8 and net.grid == 8
    with torch.no_grad():
        assert net.eval()(_images(2, 64)).shape == (2, dim) == (2, 384)


def test_vit_sizes_are_deits():
    tiny, small = _vit("vit_tiny"), _vit("vit_small")
    assert (tiny.embed_dim, len(tiny.blocks), tiny.num_heads) == (192, 12, 3)
    assert (small.embed_dim, len(small.blocks), small.num_heads) == (384, 12, 6)
    assert tiny.blocks[0].mlp[0].out_features == 4 * 192


def test_unknown_names_are_config_errors_listing_the_known_ones():
    with pytest.raises(ConfigError, match="resnet18, resnet50, small, vit_small, vit_tiny"):
        build_backbone("resnet34", 32)
    with pytest.raises(ConfigError, match="bn, gn_ws"):
        build_backbone("resnet18", 32, norm="ln")
    with pytest.raises(ConfigError, match="ViTs only"):
        build_backbone("resnet18", 32, frozen_patch_embed=True)


# ResNets


def test_resnet_state_dict_loads_into_torchvision_with_cifar_stem():
    torch.manual_seed(0)
    net, _ = build_backbone("resnet18", 32)
    reference = torchvision.models.resnet18(weights=None)
    reference.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    reference.maxpool = nn.Identity()
    reference.fc = nn.Identity()
    reference.load_state_dict(net.state_dict())  # strict: the same keys and shapes
    x = _images(2, 32)
    with torch.no_grad():
        torch.testing.assert_close(reference.eval()(x), net.eval()(x))


def test_resnet_stem_depends_on_image_size():
    assert build_backbone("resnet18", 64)[0].conv1.kernel_size == (3, 3)
    big = build_backbone("resnet18", 96)[0]
    assert big.conv1.kernel_size == (7, 7) and isinstance(big.maxpool, nn.MaxPool2d)


# ViT


@pytest.mark.parametrize(
    "size, patch", [(4, 1), (8, 1), (16, 2), (32, 4), (64, 8), (96, 12), (200, 25), (224, 16), (384, 16)]
)
def test_vit_patch_size_rule(size, patch):
    assert vit_patch_size(size) == patch


def test_vit_built_for_32px_accepts_smaller_crops_and_is_unchanged_at_32px():
    net = _vit()
    x = _images(2, 32)
    with torch.no_grad():
        before = net(x)
        assert net(_images(2, 16, seed=1)).shape == (2, 192)  # 4x4 grid
        assert net(_images(2, 14, seed=2)).shape == (2, 192)  # 3x3 grid, 2 px dropped
        assert net(_images(2, 16, seed=3, width=32)).shape == (2, 192)  # 4x8 grid
        after = net(x)
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    assert net.interpolate_pos_embed(8, 8) is net.pos_embed  # no resampling at the native grid


def test_position_embedding_interpolation_keeps_rows_columns_and_cls():
    # Channel 0 encodes the row, channel 1 the column: a transposed or misordered resampling
    # would mix them up.
    net = _vit()
    g, d = net.grid, net.embed_dim
    rows, cols = torch.meshgrid(
        torch.arange(g, dtype=torch.float32), torch.arange(g, dtype=torch.float32), indexing="ij"
    )
    pos = torch.zeros(1, 1 + g * g, d)
    pos[0, 0] = 7.0
    pos[0, 1:, 0] = rows.flatten()
    pos[0, 1:, 1] = cols.flatten()
    with torch.no_grad():
        net.pos_embed.copy_(pos)
        out = net.interpolate_pos_embed(4, 2)
    assert out.shape == (1, 1 + 4 * 2, d)
    assert torch.equal(out[0, 0], pos[0, 0])
    grid = out[0, 1:].reshape(4, 2, d)
    assert torch.all(grid[1:, :, 0] > grid[:-1, :, 0])  # rows increase down the 4 rows
    assert torch.allclose(grid[:, 0, 0], grid[:, 1, 0])  # and do not vary across columns
    assert torch.all(grid[:, 1, 1] > grid[:, 0, 1])
    assert torch.allclose(grid[0, :, 1], grid[3, :, 1])
    assert torch.all(grid[..., 2:] == 0)


def test_vit_init_is_trunc_normal_002():
    net = _vit("vit_small")
    for t in (net.pos_embed, net.blocks[0].attn.qkv.weight, net.blocks[5].mlp[0].weight):
        assert abs(t.std().item() - 0.02) < 0.002


def test_frozen_patch_embedding_gets_no_gradient_while_the_rest_does():
    net = _vit(frozen_patch_embed=True).train()
    net(_images(2, 32)).square().sum().backward()
    frozen = {"patch_embed.weight", "patch_embed.bias"}
    for name, p in net.named_parameters():
        if name in frozen:
            assert not p.requires_grad and p.grad is None, name
        else:
            assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name
    trainable = _vit()
    assert all(p.requires_grad for p in trainable.parameters())
    torch.testing.assert_close(net.patch_embed.weight, trainable.patch_embed.weight)  # the same random init


def ref_last_attention(net, x):
    # Capture the last block's input, then for each sample and head: softmax over all tokens of
    # q_cls . k_j / sqrt(d), in float64, keeping the patches.
    captured = {}
    hook = net.blocks[-1].register_forward_pre_hook(lambda m, args: captured.setdefault("x", args[0]))
    net(x)
    hook.remove()
    last = net.blocks[-1]
    y = last.norm1(captured["x"]).double()
    w, b = last.attn.qkv.weight.double(), last.attn.qkv.bias.double()
    heads, dim = net.num_heads, net.embed_dim
    hd = dim // heads
    n, t, _ = y.shape
    out = torch.zeros(n, heads, t - 1, dtype=torch.float64)
    for i in range(n):
        qkv = y[i] @ w.T + b  # (T, 3D): q, k, v, each head's slice contiguous
        for h in range(heads):
            q = qkv[0, h * hd : (h + 1) * hd]
            k = qkv[:, dim + h * hd : dim + (h + 1) * hd]
            logits = k @ q / math.sqrt(hd)
            out[i, h] = torch.softmax(logits, dim=0)[1:]
    return out


@pytest.mark.parametrize("size", [32, 16])
def test_last_attention_is_the_cls_rows_of_the_last_block(size):
    net = _vit()
    x = _images(3, size)
    with torch.no_grad():
        maps = net.last_attention(x)
        reference = ref_last_attention(net, x)
    grid = size // net.patch_size
    assert maps.shape == (3, 3, grid, grid)
    assert torch.all(maps >= 0)
    sums = maps.flatten(2).sum(-1)
    assert torch.all(sums <= 1 + 1e-6) and torch.all(sums > 0)
    torch.testing.assert_close(maps.flatten(2).double(), reference, rtol=1e-4, atol=1e-6)


# GroupNorm + weight standardisation


class _Model(nn.Module):
    """A backbone held twice (as in a method's encoder) and an MLP head with BatchNorm1d."""

    def __init__(self, backbone, dim):
        super().__init__()
        self.backbone = backbone
        self.projector = nn.Sequential(
            nn.Linear(dim, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 48), nn.BatchNorm1d(48, affine=False)
        )
        self.encoder = nn.Sequential(self.backbone, self.projector)

    def forward(self, x):
        return self.encoder(x)


def test_gn_ws_removes_every_batch_norm_and_keeps_the_shared_backbone_shared():
    torch.manual_seed(0)
    backbone, dim = build_backbone("small", 32)
    model = _Model(backbone, dim)
    bn = model.projector[1]
    assert has_batch_norm(model)
    assert convert_to_gn_ws(model) is model
    assert not has_batch_norm(model)
    assert model.encoder[0] is model.backbone and model.encoder[1] is model.projector
    gn = model.projector[1]
    assert isinstance(gn, nn.GroupNorm) and gn.num_channels == 64 and gn.num_groups == GN_GROUPS
    assert gn.weight is bn.weight and gn.bias is bn.bias
    no_affine = model.projector[4]
    assert isinstance(no_affine, nn.GroupNorm) and not no_affine.affine and no_affine.num_groups == GN_GROUPS
    assert all(isinstance(m, WSConv2d) for m in model.modules() if isinstance(m, nn.Conv2d))


def test_gn_ws_replaces_a_layer_held_by_two_parents_once():
    bn = nn.BatchNorm2d(8)
    a, b = nn.Sequential(nn.Conv2d(3, 8, 3), bn), nn.Sequential(bn)
    root = nn.ModuleDict({"a": a, "b": b})
    convert_to_gn_ws(root)
    assert isinstance(a[1], nn.GroupNorm) and a[1] is b[0]
    assert convert_to_gn_ws(nn.BatchNorm2d(4)).__class__ is nn.GroupNorm  # the root itself


def test_gn_ws_outputs_of_a_sample_do_not_depend_on_the_rest_of_the_batch():
    torch.manual_seed(0)
    backbone, dim = build_backbone("small", 32)
    model = _Model(backbone, dim)
    convert_to_gn_ws(model)
    model.train()
    x = _images(4, 32)
    y = x.clone()
    y[1:] = _images(3, 32, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], model(y)[0])
        torch.testing.assert_close(model(x)[:1], model(x[:1]))


def test_batch_independence_check_fails_with_batch_norm_left():
    # The test above would catch a BatchNorm the conversion missed.
    torch.manual_seed(0)
    model = _Model(*build_backbone("small", 32)).train()
    x = _images(4, 32)
    y = x.clone()
    y[1:] = _images(3, 32, seed=5)
    with torch.no_grad():
        assert not torch.allclose(model(x)[0], model(y)[0], atol=1e-3)


def test_build_backbone_gn_ws():
    net, _ = build_backbone("resnet18", 32, norm="gn_ws")
    assert not has_batch_norm(net)
    assert isinstance(net.conv1, WSConv2d) and isinstance(net.layer2[0].downsample[0], WSConv2d)
    assert net.layer4[1].bn2.num_groups == GN_GROUPS
    with torch.no_grad():
        assert net.train()(_images(2, 32)).shape == (2, 512)
    vit = _vit(norm="gn_ws")
    assert type(vit.patch_embed) is nn.Conv2d  # ViTs are left as they are


def test_gn_ws_leaves_a_vit_inside_a_model_whole():
    torch.manual_seed(0)
    backbone, dim = build_backbone("vit_tiny", 32, frozen_patch_embed=True)
    model = _Model(backbone, dim)
    x = _images(4, 32)
    with torch.no_grad():
        before = model.backbone.eval()(x)
        convert_to_gn_ws(model)
        torch.testing.assert_close(model.backbone(x), before, rtol=0, atol=0)
    assert type(model.backbone.patch_embed) is nn.Conv2d and not model.backbone.patch_embed.weight.requires_grad
    assert not has_batch_norm(model)  # the head's BatchNorms are converted all the same


def test_gn_ws_keeps_parameter_names_and_values():
    torch.manual_seed(0)
    net, _ = build_backbone("resnet18", 32)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    convert_to_gn_ws(net)
    after = net.state_dict()
    running = {k for k in before if k.rsplit(".", 1)[1] in ("running_mean", "running_var", "num_batches_tracked")}
    assert set(after) == set(before) - running
    for k, v in after.items():
        assert torch.equal(v, before[k]), k
    reference = torchvision.models.resnet18(weights=None)
    reference.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    reference.fc = nn.Identity()
    missing, unexpected = reference.load_state_dict(after, strict=False)
    # torch accepts a BatchNorm state without num_batches_tracked (older checkpoints), so it is not reported missing.
    assert set(missing) == {k for k in running if not k.endswith("num_batches_tracked")} and not unexpected


def test_ws_conv_standardises_each_output_channel():
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 5, 3, padding=1, bias=True)
    with torch.no_grad():
        conv.weight.mul_(torch.arange(1.0, 6.0).view(5, 1, 1, 1)).add_(torch.arange(5.0).view(5, 1, 1, 1))
    ws = convert_to_gn_ws(nn.Sequential(conv))[0]
    w = ws.standardized_weight().double()
    torch.testing.assert_close(w.mean(dim=(1, 2, 3)), torch.zeros(5, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(
        w.var(dim=(1, 2, 3), unbiased=False), torch.ones(5, dtype=torch.float64), atol=2e-3, rtol=0
    )
    # Exactly: var / (var + eps), eps = 1e-5; and the forward uses (W - mean) / sqrt(var + 1e-5), in float64.
    w0 = conv.weight.double()
    var0 = w0.var(dim=(1, 2, 3), unbiased=False)
    torch.testing.assert_close(w.var(dim=(1, 2, 3), unbiased=False), var0 / (var0 + 1e-5), atol=1e-6, rtol=0)
    ref_w = (w0 - w0.mean(dim=(1, 2, 3), keepdim=True)) / torch.sqrt(
        w0.var(dim=(1, 2, 3), unbiased=False, keepdim=True) + 1e-5
    )
    x = _images(2, 8).repeat(1, 2, 1, 1)
    expected = torch.nn.functional.conv2d(x.double(), ref_w, conv.bias.double(), padding=1)
    torch.testing.assert_close(ws(x).double(), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "channels, groups", [(64, 16), (256, 16), (32, 16), (24, 12), (8, 8), (3, 3), (100, 10), (17, 1)]
)
def test_group_count_falls_back_to_the_largest_divisor(channels, groups):
    assert group_count(channels) == groups


# State dict round trip


@pytest.mark.parametrize("name, norm", [("vit_tiny", "bn"), ("small", "bn"), ("small", "gn_ws")])
def test_state_dict_round_trip(name, norm):
    torch.manual_seed(0)
    net, _ = build_backbone(name, 32, norm=norm)
    torch.manual_seed(1)
    copy, _ = build_backbone(name, 32, norm=norm)
    x = _images(2, 32)
    with torch.no_grad():
        assert not torch.allclose(net.eval()(x), copy.eval()(x))
        copy.load_state_dict(net.state_dict())
        torch.testing.assert_close(copy(x), net(x), rtol=0, atol=0)


def official_sincos(h, w, embed_dim, temperature=10000.0):
    """MoCo v3's build_2d_sincos_position_embedding (vits.py), transcribed."""
    grid_w = torch.arange(w, dtype=torch.float32)
    grid_h = torch.arange(h, dtype=torch.float32)
    grid_w, grid_h = torch.meshgrid(grid_w, grid_h, indexing="ij")
    pos_dim = embed_dim // 4
    omega = torch.arange(pos_dim, dtype=torch.float32) / pos_dim
    omega = 1.0 / (temperature**omega)
    out_w = torch.einsum("m,d->md", [grid_w.flatten(), omega])
    out_h = torch.einsum("m,d->md", [grid_h.flatten(), omega])
    pos_emb = torch.cat([torch.sin(out_w), torch.cos(out_w), torch.sin(out_h), torch.cos(out_h)], dim=1)[None, :, :]
    return torch.cat([torch.zeros([1, 1, embed_dim]), pos_emb], dim=1)


def test_sincos_position_embedding_is_moco_v3s_and_fixed():
    net = _vit("vit_small", vit=ViTOptions(num_heads=12, position_embedding="sincos")).train()
    assert net.num_heads == 12 and net.blocks[0].attn.num_heads == 12
    torch.testing.assert_close(net.pos_embed, official_sincos(8, 8, 384), rtol=0, atol=1e-6)
    assert "pos_embed" not in dict(net.named_parameters()) and "pos_embed" in net.state_dict()
    net(_images(2, 32)).square().sum().backward()
    assert all(p.grad is not None for p in net.parameters())  # everything else trains
    # Another grid gets the embedding of that grid, not a resampling of the 8 x 8 one.
    torch.testing.assert_close(net.interpolate_pos_embed(4, 4), official_sincos(4, 4, 384), rtol=0, atol=1e-6)
    learned = _vit("vit_small")
    assert learned.num_heads == 6 and isinstance(learned.pos_embed, nn.Parameter)


def test_vit_options_are_checked():
    with pytest.raises(ConfigError, match="its number of heads must divide 192, got 5"):
        build_backbone("vit_tiny", 32, vit=ViTOptions(num_heads=5))
    with pytest.raises(ConfigError, match="unknown position embedding 'rope'"):
        build_backbone("vit_tiny", 32, vit=ViTOptions(position_embedding="rope"))
    with pytest.raises(ConfigError, match="apply to ViTs only"):
        build_backbone("resnet18", 32, vit=ViTOptions(drop_path_rate=0.1))
    build_backbone("resnet18", 32, vit=ViTOptions())  # the defaults are every backbone's


def test_drop_path_drops_whole_samples_and_keeps_the_expectation():
    torch.manual_seed(0)
    drop = DropPath(0.25).train()
    x = torch.ones(4000, 3, 5)
    out = drop(x)
    per_sample = out.flatten(1)
    kept = per_sample[:, 0] != 0
    assert torch.all(per_sample[kept] == 1 / 0.75) and torch.all(per_sample[~kept] == 0)  # a sample is all or nothing
    assert abs(kept.float().mean().item() - 0.75) < 0.03
    assert abs(out.mean().item() - 1.0) < 0.05
    assert drop.eval()(x) is x
    net = _vit(vit=ViTOptions(drop_path_rate=0.1))
    assert [b.drop_path.p for b in net.blocks] == pytest.approx(torch.linspace(0, 0.1, 12).tolist())
    disable_drop_path(net)
    assert all(b.drop_path.p == 0 for b in net.blocks)

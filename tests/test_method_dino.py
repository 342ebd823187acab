"""DINO against its defining mechanisms: centring, the teacher (EMA, no gradient, evaluated),
the frozen last layer, the schedules, clipping, multi-crop; attention maps."""

import base64
import copy
import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from tiny import stop_after, tiny_heads

import cssl_core.methods.dino  # noqa: F401 (registers it)
from cssl_core.config import build_config, rebuild_config
from cssl_core.errors import ConfigError
from cssl_core.evaluation import evaluate_checkpoint
from cssl_core.evaluation.attention import attention_maps
from cssl_core.losses import dino_loss
from cssl_core.methods import Batch, build_method
from cssl_core.methods.dino import DINO
from cssl_core.train import load_checkpoint, pretrain
from cssl_core.train.checkpoint import build_encoder_from_checkpoint
from cssl_core.train.schedules import warmup_cosine

TINY_HEADS = tiny_heads("dino")
# Two local crops: the small-image recipe has none, and these tests check what the student does
# with them.
LOCAL_CROPS = {"local_crops": 2}
# 128 images at batch 32: 4 steps per epoch.
TINY_RUN = {
    "dataset": "synthetic",
    "backbone": "small",
    "batch_size": 32,
    "subset": 128,
    "checkpoint_every": 1,
    **TINY_HEADS,
    **LOCAL_CROPS,
}


def make(seed=0, **overrides):
    torch.manual_seed(seed)
    values = {"dataset": "synthetic", "backbone": "small", **TINY_HEADS, **LOCAL_CROPS, **overrides}
    config = build_config("dino", values)
    return build_method(config, 32, 64)


def batch_for(model, n=8, seed=0, step=0, total_steps=10, steps_per_epoch=5):
    g = torch.Generator().manual_seed(seed)
    views = [torch.randn(n, 3, spec.size, spec.size, generator=g) for spec in DINO.view_specs(model.config, 32)]
    schedules = {"lr": 0.1, "weight_decay": 0.0}
    schedules.update({k: float(v[step]) for k, v in model.schedules(total_steps, steps_per_epoch).items()})
    return Batch(views=views, indices=torch.arange(n), step=step, epoch=step // steps_per_epoch, schedules=schedules)


def outputs(model, batch):
    """The student's outputs on every crop and the teacher's on the global crops, from the submodules."""
    n = batch.views[0].shape[0]
    globals_, locals_ = torch.cat(batch.views[:2]), torch.cat(batch.views[2:])
    student = model.head(torch.cat([model.backbone(globals_), model.backbone(locals_)])).split(n)
    with torch.no_grad():
        teacher = model.teacher(globals_).split(n)
    return list(student), list(teacher)


def initial_model(config, num_samples):
    """The method as the loop builds it at step 0 (same seed)."""
    torch.manual_seed(config.seed)
    return build_method(config, 32, num_samples)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """Two epochs (8 steps) of DINO on the small convnet, a checkpoint after each epoch, with a
    cosine weight decay and a 1-epoch teacher-temperature warm-up (capped at 2 steps, 30% of the
    run); each step's schedules recorded."""
    out = tmp_path_factory.mktemp("dino-small")
    config = build_config(
        "dino",
        {
            **TINY_RUN,
            "epochs": 2,
            "weight_decay": 0.04,
            "weight_decay_end": 0.4,
            "warmup_teacher_temp_epochs": 1,
            "teacher_temp": 0.07,
        },
    )
    seen, forward = [], DINO.forward

    def recording_forward(self, batch):
        seen.append(dict(batch.schedules))
        return forward(self, batch)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(DINO, "forward", recording_forward)
        result = pretrain(config, out)
    return config, result, out, seen


def test_loss_uses_the_centre_and_the_scheduled_teacher_temperature():
    model = make(recipe="paper")  # teacher temperature 0.04 -> 0.07
    with torch.no_grad():
        model.center.copy_(0.5 * torch.randn_like(model.center))
    batch = batch_for(model, step=3, total_steps=100, steps_per_epoch=1)  # mid warm-up
    temp = batch.schedules["teacher_temp"]
    assert 0.04 < temp < 0.07
    loss = model(batch).loss
    student, teacher = outputs(model, batch)
    torch.testing.assert_close(loss, dino_loss(student, teacher, model.center, 0.1, temp))
    assert not torch.allclose(loss, dino_loss(student, teacher, torch.zeros_like(model.center), 0.1, temp))
    assert not torch.allclose(loss, dino_loss(student, teacher, model.center, 0.1, 0.07))


def test_centre_moves_toward_the_teachers_batch_mean():
    model = make()
    with torch.no_grad():
        model.center.copy_(torch.randn_like(model.center))
    before = model.center.clone()
    batch = batch_for(model)
    _, teacher = outputs(model, batch)
    model(batch)
    torch.testing.assert_close(model.center, before)  # the step's loss used the centre before this batch
    model.after_step(batch)
    batch_mean = torch.cat(teacher).mean(dim=0, keepdim=True)  # the global crops only
    torch.testing.assert_close(model.center, 0.9 * before + 0.1 * batch_mean)
    model.after_step(batch)  # no forward since: no second update
    torch.testing.assert_close(model.center, 0.9 * before + 0.1 * batch_mean)


def test_no_gradient_into_the_teacher_which_follows_the_student_by_ema():
    model = make()
    assert all(not p.requires_grad for p in model.teacher.parameters())
    model(batch_for(model)).loss.backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    assert all(p.grad is not None for p in model.backbone.parameters())
    with torch.no_grad():
        for p in model.student.parameters():
            p.add_(1.0)
    teacher_before = copy.deepcopy(model.teacher)
    batch = batch_for(model)
    batch.schedules["momentum"] = 0.9
    model.after_step(batch)
    for t, b, s in zip(model.teacher.parameters(), teacher_before.parameters(), model.student.parameters()):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * s)
    # BatchNorm statistics are the teacher's own, not copied from the student.
    for t, b in zip(model.teacher.buffers(), teacher_before.buffers()):
        assert torch.equal(t, b)


def test_multi_crop_views_and_the_teacher_sees_the_global_crops_only():
    # 96 px: the paper's recipe. Official crop scales: main_dino.py's defaults for a ViT, its
    # README's ResNet-50 command for a convnet.
    vit = build_config("dino", {"dataset": "stl10", "backbone": "vit_small"}).method_config
    specs = DINO.view_specs(vit, 224)
    assert [s.size for s in specs] == [224, 224] + [96] * 8
    assert [s.crop_scale for s in specs] == [(0.4, 1.0)] * 2 + [(0.05, 0.4)] * 8
    assert [(s.blur_p, s.solarize_p) for s in specs[:3]] == [(1.0, 0.0), (0.1, 0.2), (0.5, 0.0)]
    assert all((s.brightness, s.contrast, s.saturation, s.hue) == (0.4, 0.4, 0.2, 0.1) for s in specs)
    for backbone in ("resnet50", "small"):
        for dataset in ("stl10", "cifar10"):  # the small-image recipe keeps the official scales
            convnet = build_config("dino", {"dataset": dataset, "backbone": backbone}).method_config
            specs = DINO.view_specs(convnet, 224)
            assert [s.crop_scale for s in specs] == [(0.14, 1.0)] * 2 + [(0.05, 0.14)] * convnet.local_crops
    model = make()
    seen = []
    model.teacher.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape))
    model(batch_for(model, n=8))
    assert seen == [torch.Size([16, 3, 32, 32])]
    with pytest.raises(ConfigError, match="dino takes its 2 global crops .* 'multicrop' makes 8"):
        build_config("dino", {"dataset": "synthetic", "augmentation": "multicrop"})


def test_teacher_temperature_warms_up_linearly_then_stays():
    model = make(recipe="paper")  # 0.04 -> 0.07 over 30 epochs
    long = model.schedules(1000, 10)["teacher_temp"]  # 30 epochs = 300 steps, within 30% of the run
    np.testing.assert_allclose(long[:300], np.linspace(0.04, 0.07, 300))
    assert np.all(long[300:] == 0.07)
    short = model.schedules(100, 10)["teacher_temp"]  # 30 epochs > the run: warm-up capped at 30 steps
    np.testing.assert_allclose(short[:30], np.linspace(0.04, 0.07, 30))
    assert np.all(short[30:] == 0.07)
    momentum = model.schedules(100, 10)["momentum"]
    assert momentum[0] == pytest.approx(0.996) and momentum[-1] > 0.99999 and np.all(np.diff(momentum) >= 0)


def test_paper_and_small_image_defaults():
    paper = build_config("dino", {"dataset": "stl10", "backbone": "vit_small"}).method_config
    assert (paper.optimizer, paper.base_lr, paper.weight_decay, paper.weight_decay_end) == ("adamw", 0.0005, 0.04, 0.4)
    assert (paper.grad_clip, paper.warmup_epochs, paper.out_dim, paper.local_crops) == (3.0, 10.0, 65536, 8)
    assert (paper.momentum_teacher, paper.student_temp, paper.center_momentum) == (0.996, 0.1, 0.9)
    small = build_config("dino", {"dataset": "cifar10"})
    assert small.batch_size == 128 and small.method_config.out_dim == 4096 and small.method_config.optimizer == "sgd"
    assert small.method_config.local_crops == 0  # measured: four 14 px local crops cost 2.5 kNN points
    vit = build_config("dino", {"dataset": "cifar10", "backbone": "vit_tiny"}).method_config
    assert vit.out_dim == 4096 and (vit.optimizer, vit.weight_decay_end) == ("adamw", 0.4)  # a ViT keeps AdamW
    assert build_config("dino", small.to_dict()) == small


def test_schedules_reach_the_batch(small_run):
    *_, seen = small_run
    np.testing.assert_allclose([s["weight_decay"] for s in seen], warmup_cosine(0.04, 8, 0, final=0.4))
    assert seen[0]["weight_decay"] == pytest.approx(0.04) and seen[-1]["weight_decay"] > 0.38
    # A 1-epoch (4-step) warm-up, capped at 30% of the 8-step run: 2 steps.
    np.testing.assert_allclose([s["teacher_temp"] for s in seen[:3]], [0.04, 0.07, 0.07])
    assert seen[1]["momentum"] > seen[0]["momentum"] == pytest.approx(0.99)


def test_last_layer_frozen_in_the_first_epoch_only(small_run):
    config, result, out, _ = small_run
    init = initial_model(config, 128).state_dict()
    after_epoch_1 = load_checkpoint(out / "checkpoints" / "epoch_0001.pt")["model"]
    final = load_checkpoint(result.checkpoint)["model"]
    last = "head.last_layer.weight_v"
    assert torch.equal(after_epoch_1[last], init[last])
    assert torch.equal(after_epoch_1["teacher.1.last_layer.weight_v"], init[last])
    for key in ("backbone.0.0.weight", "head.mlp.0.weight", "head.mlp.4.weight"):
        assert not torch.allclose(after_epoch_1[key], init[key]), key
    assert not torch.allclose(final[last], init[last])
    # With norm_last_layer the rows keep unit norm: g is fixed, not trained.
    assert torch.equal(final["head.last_layer.weight_g"], torch.ones_like(final["head.last_layer.weight_g"]))


def test_gradient_clipping_bounds_the_update(tmp_path):
    def first_update(clip, folder):
        # SGD, no weight decay, no warmup: the first step moves the student by lr * (clipped) gradient.
        config = build_config(
            "dino",
            {
                **TINY_RUN,
                "epochs": 1,
                "optimizer": "sgd",
                "base_lr": 0.1,
                "weight_decay": 0.0,
                "warmup_epochs": 0,
                "grad_clip": clip,
            },
        )
        init = initial_model(config, 128).student.state_dict()
        result = pretrain(config, tmp_path / folder, should_stop=stop_after(1))
        state = load_checkpoint(result.checkpoint)["model"]
        deltas = [state[f"student.{k}"] - v for k, v in init.items() if v.is_floating_point() and "running" not in k]
        return max(d.norm() for d in deltas).item(), config.lr

    # Clipping is per parameter tensor, as in DINO's official clip_gradients; 1% for the
    # rounding of (weight + update) - weight in float32 on small tensors.
    clipped, lr = first_update(1e-3, "clipped")
    free, _ = first_update(None, "free")
    assert clipped <= lr * 1e-3 * 1.01
    assert free > 100 * clipped


def test_teacher_is_the_evaluation_encoder(small_run):
    model = make()
    assert model.encoder_for_eval() is model.teacher[0]
    _, result, *_ = small_run
    state = load_checkpoint(result.checkpoint)
    encoder = build_encoder_from_checkpoint(state).state_dict()
    for key, value in encoder.items():
        assert torch.equal(value, state["model"][f"teacher.0.{key}"]), key
    assert not all(torch.equal(v, state["model"][f"backbone.{k}"]) for k, v in encoder.items())


def test_head_survives_deepcopy_state_dict_and_gn_ws():
    model = make(norm="gn_ws", norm_last_layer=False)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    x = torch.randn(4, 32)
    layer = model.head.last_layer
    v, g = layer.weight_v, layer.weight_g
    torch.testing.assert_close(layer(x), x @ (g * F.normalize(v, dim=1)).T)
    # Without norm_last_layer the norm g trains, and is frozen with v in the first epoch.
    assert g.requires_grad and {id(p) for p in model.frozen_parameters()[0][0]} == {id(v), id(g)}
    assert model.frozen_parameters()[0][1] == 1
    other = make(seed=1, norm="gn_ws", norm_last_layer=False)
    clone = copy.deepcopy(model)
    clone.load_state_dict(other.state_dict())
    batch = batch_for(model)
    torch.testing.assert_close(clone(batch).loss, other(batch).loss)
    assert not torch.allclose(clone(batch).loss, model(batch).loss)


def test_attention_maps_of_a_vit_checkpoint(tmp_path, small_run):
    config = build_config("dino", {**TINY_RUN, "backbone": "vit_tiny", "batch_size": 10, "subset": 20, "epochs": 1})
    result = pretrain(config, tmp_path, should_stop=stop_after(1))  # builds and steps a ViT
    state = load_checkpoint(result.checkpoint)
    assert state["step"] == 1 and np.isfinite(result.final_loss)
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    maps = attention_maps(result.checkpoint, images, device="cpu")
    assert maps.shape == (5, 3, 8, 8)  # vit_tiny: 3 heads; 32 px in patches of 4
    assert (maps >= 0).all() and (maps.sum(dim=(2, 3)) <= 1 + 1e-5).all()
    # The teacher's maps on images normalised with the checkpoint's statistics.
    mean, std = (torch.tensor(state["normalization"][k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    x = (images.float() / 255 - mean) / std
    teacher = build_encoder_from_checkpoint(state).eval()
    with torch.no_grad():
        torch.testing.assert_close(maps, teacher.last_attention(x))
        assert not torch.allclose(maps, teacher.last_attention(images.float() / 255))
    _, small, *_ = small_run
    with pytest.raises(ConfigError, match="backbone is 'small'"):
        attention_maps(small.checkpoint, images)


def test_attention_maps_of_any_vit_checkpoint(tmp_path):
    config = build_config(
        "simclr", {"dataset": "synthetic", "backbone": "vit_tiny", "batch_size": 10, "subset": 20, "epochs": 1}
    )
    state = load_checkpoint(pretrain(config, tmp_path, should_stop=stop_after(1)).checkpoint)
    maps = attention_maps(state, torch.randint(0, 256, (2, 3, 40, 40), dtype=torch.uint8), device="cpu")
    assert maps.shape == (2, 3, 10, 10)  # other sizes too: position embeddings are interpolated


def test_attention_protocol_on_a_few_test_images(tmp_path, small_run):
    config = build_config("dino", {**TINY_RUN, "backbone": "vit_tiny", "batch_size": 10, "subset": 20, "epochs": 1})
    checkpoint = pretrain(config, tmp_path, should_stop=stop_after(1)).checkpoint
    result = evaluate_checkpoint(checkpoint, "attention", device="cpu", num_images=4, seed=3)
    extra = result.extra
    assert result.top1 is None and result.num_test == 4 and result.parameters == {"num_images": 4, "seed": 3}
    assert (extra["heads"], extra["patch"], len(extra["labels"])) == (3, 4, 4)
    maps = torch.tensor(extra["maps"])
    assert maps.shape == (4, 3, 8, 8)  # vit_tiny: 3 heads; 32 px in patches of 4
    assert (maps >= 0).all() and (maps.sum(dim=(2, 3)) <= 1 + 1e-3).all()
    for url in extra["images"]:
        assert url.startswith("data:image/png;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
        assert (image.size, image.mode) == ((32, 32), "RGB")
    assert all(0 <= label < len(extra["classes"]) for label in extra["labels"])
    assert evaluate_checkpoint(checkpoint, "attention", device="cpu", num_images=4, seed=3).extra == extra  # seeded
    _, small, *_ = small_run
    with pytest.raises(ConfigError, match="the attention protocol takes a ViT backbone only"):
        evaluate_checkpoint(small.checkpoint, "attention", device="cpu")
    with pytest.raises(ConfigError, match="num_images"):
        evaluate_checkpoint(checkpoint, "attention", num_images=33)


def test_vit_local_crops_are_whole_patches():
    # 96 px at 224 in patches of 16 (6 x 6); at 32 px the 14 px a convnet gets would be 3.5
    # patches of 4, so a ViT gets 12 (3 x 3), and a config that would cut patches is refused.
    for dataset, size, patch, local in (("cifar10", 32, 4, 12), ("stl10", 96, 12, 36)):
        vit = build_config("dino", {"dataset": dataset, "backbone": "vit_tiny", "local_crops": 4}).method_config
        assert vit.local_crops_in_patches
        assert [s.size for s in DINO.view_specs(vit, size)[2:]] == [local] * 4
        assert local % patch == 0
    assert [s.size for s in DINO.view_specs(vit, 224)[2:]] == [96] * vit.local_crops
    convnet = build_config("dino", {"dataset": "cifar10", "backbone": "small", "local_crops": 4}).method_config
    assert [s.size for s in DINO.view_specs(convnet, 32)[2:]] == [14] * 4
    with pytest.raises(ConfigError, match="local crops of 14 px are not a whole number of its 4 px patches"):
        build_config(
            "dino", {"dataset": "cifar10", "backbone": "vit_tiny", "local_crops": 4, "local_crops_in_patches": False}
        )
    build_config(
        "dino", {"dataset": "cifar10", "backbone": "vit_tiny", "local_crops": 0, "local_crops_in_patches": False}
    )


def test_vit_student_has_drop_path_and_the_teacher_none():
    from cssl_core.backbones.vit import DropPath

    model = make(backbone="vit_tiny").train()
    student_rates = [m.p for m in model.backbone.modules() if isinstance(m, DropPath)]
    # Official: linspace(0, 0.1, depth) over the blocks, one DropPath per block for both branches.
    assert student_rates == pytest.approx(np.linspace(0, 0.1, 12).tolist())
    assert all(m.p == 0 for m in model.teacher.modules() if isinstance(m, DropPath))
    x = torch.randn(32, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(model.backbone(x), model.backbone(x))  # a sample's drops differ per pass
        torch.testing.assert_close(model.teacher[0](x), model.teacher[0](x))
        model.eval()
        torch.testing.assert_close(model.backbone(x), model.backbone(x))
    off = make(backbone="vit_tiny", drop_path_rate=0).train()
    with torch.no_grad():
        torch.testing.assert_close(off.backbone(x), off.backbone(x))
    # A checkpoint from before the key existed trained its student without drop path.
    stored = build_config("dino", {"dataset": "synthetic", "backbone": "vit_tiny"}).to_dict()
    del stored["drop_path_rate"]
    assert rebuild_config(stored).method_config.drop_path_rate == 0.0

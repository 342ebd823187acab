"""SwAV (arXiv 2006.09882) against its defining mechanisms: each test fails when one is removed
(the swap, the equal partition, unit prototypes, frozen prototypes, the queue's timing)."""

import importlib

import pytest
import torch
import torch.nn.functional as F
from tiny import tiny_heads

import cssl_core.methods.swav  # noqa: F401 (registers it)
from cssl_core.config import build_config
from cssl_core.errors import ConfigError
from cssl_core.losses import sinkhorn, swav_loss
from cssl_core.methods import Batch, build_method
from cssl_core.methods.swav import SwAV, SwAVConfig
from cssl_core.train import load_checkpoint, loop, pretrain
from cssl_core.train.optim import build_optimizer

TINY_HEADS = tiny_heads("swav")
# 80 images, batch 16: 5 steps per epoch.
TINY_RUN = {
    "dataset": "synthetic",
    "backbone": "small",
    "batch_size": 16,
    "subset": 80,
    "checkpoint_every": 1,
    "epochs": 2,
    **TINY_HEADS,
}


def make(**overrides):
    torch.manual_seed(0)
    # Two local crops: multi-crop stays under test though small images default to none.
    keys = {"dataset": "synthetic", "backbone": "small", "local_crops": 2, **TINY_HEADS, **overrides}
    return build_method(build_config("swav", keys), 32, 64)


def batch_for(model, n=8, seed=0, epoch=0):
    g = torch.Generator().manual_seed(seed)
    sizes = [spec.size for spec in type(model).view_specs(model.config, 32)]
    views = [torch.randn(n, 3, s, s, generator=g) for s in sizes]
    schedules = {"lr": 0.1, "weight_decay": 0.0, "queue_filling": float(epoch >= model.config.epoch_queue_starts)}
    return Batch(views=views, indices=torch.arange(n), step=0, epoch=epoch, schedules=schedules)


def crop_embeddings(model, batch):
    """The method's unit embeddings (V*N, D) and prototype scores, one (N, K) per crop, rebuilt
    from its submodules (train-mode BN: the same batch gives the same values)."""
    n = batch.views[0].shape[0]
    features = [model.backbone(torch.cat(batch.views[:2])), model.backbone(torch.cat(batch.views[2:]))]
    z = F.normalize(model.projector(torch.cat(features)), dim=1)
    return z, list(model.prototypes(z).split(n))


def cross_entropy(codes, scores, temperature):
    return -(codes * F.log_softmax(scores / temperature, dim=1)).sum(dim=1).mean()


def run_config(**overrides):
    return build_config("swav", {**TINY_RUN, **overrides})


def test_views_are_two_preset_global_crops_then_the_local_ones():
    specs = SwAV.view_specs(SwAVConfig(), 224)
    assert [s.size for s in specs] == [224, 224] + [96] * 6
    assert [s.crop_scale for s in specs] == [(0.14, 1.0)] * 2 + [(0.05, 0.14)] * 6
    small = SwAV.view_specs(SwAVConfig(local_crops=3, jitter_strength=0.5), 32)
    assert [s.size for s in small] == [32, 32, 14, 14, 14]
    assert all(s.brightness == pytest.approx(0.8 * 0.5 * 0.5) for s in small)  # CIFAR s = 0.5, then halved


def test_small_image_recipe_is_the_default_on_small_images_only():
    small = build_config("swav", {"dataset": "cifar10"})
    assert small.recipe == "small_images" and small.batch_size == 128
    assert small.method_config.nmb_prototypes == 100 and small.method_config.lars_eta == 0.02
    assert small.method_config.local_crops == 0  # measured: the six 14 px crops cost 11 kNN points
    paper = build_config("swav", {"dataset": "stl10"})
    mc = paper.method_config
    assert (mc.nmb_prototypes, mc.base_lr, mc.lars_eta, mc.weight_decay, mc.local_crops) == (3000, 0.3, 0.001, 1e-6, 6)
    assert paper.lr * 4096 / paper.batch_size == pytest.approx(4.8)  # the paper's lr at batch 4096
    assert build_config("swav", small.to_dict()) == small


def test_loss_is_the_swapped_prediction_over_the_methods_own_crops():
    model = make()
    model.train()
    batch = batch_for(model)
    loss = model(batch).loss
    _, scores = crop_embeddings(model, batch)
    cfg = model.config
    torch.testing.assert_close(
        loss,
        swav_loss(scores[:2], scores[2:], cfg.temperature, cfg.epsilon, cfg.sinkhorn_iterations),
        rtol=1e-5,
        atol=1e-6,
    )
    codes = [sinkhorn(s, cfg.epsilon, cfg.sinkhorn_iterations) for s in scores[:2]]
    swapped = sum(
        cross_entropy(q, scores[v], cfg.temperature) for i, q in enumerate(codes) for v in range(len(scores)) if v != i
    ) / (2 * (len(scores) - 1))
    own_code = sum(cross_entropy(q, scores[i], cfg.temperature) for i, q in enumerate(codes)) / 2
    torch.testing.assert_close(loss, swapped, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(loss, own_code, rtol=1e-3)
    # The gradient reaches the backbone through the predictions only: codes carry none.
    params = list(model.backbone.parameters())
    for got, want in zip(torch.autograd.grad(loss, params, retain_graph=True), torch.autograd.grad(swapped, params)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_codes_split_the_batch_equally_between_prototypes(monkeypatch):
    n, k = 64, 16
    # SwAV's 128-dim embedding: 3 Sinkhorn rounds split the batch within 5% there, not at 32 dims.
    model = make(nmb_prototypes=k, projector_hidden_dim=64, projector_dim=128)
    batch = batch_for(model, n=n)
    with torch.no_grad():  # one prototype near every embedding, so unconstrained codes would all pick it
        z, _ = crop_embeddings(model, batch)
        model.prototypes.weight[0] = F.normalize(z[: 2 * n].mean(dim=0), dim=0)
    swav_module = importlib.import_module("cssl_core.losses.swav")
    seen = []

    def recording_sinkhorn(scores, epsilon, iterations):
        codes = sinkhorn(scores, epsilon=epsilon, iterations=iterations)
        seen.append((scores, codes))
        return codes

    monkeypatch.setattr(swav_module, "sinkhorn", recording_sinkhorn)
    model(batch)
    _, scores = crop_embeddings(model, batch)
    assert len(seen) == 2  # the two global crops only
    for (used_scores, codes), own in zip(seen, scores[:2]):
        torch.testing.assert_close(used_scores, own, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(codes.sum(dim=1), torch.ones(n))
        torch.testing.assert_close(codes.sum(dim=0), torch.full((k,), n / k), rtol=0.05, atol=0)
        # Without the partition constraint the same scores would pile onto a few prototypes.
        softmax_mass = F.softmax(own.detach() / model.config.epsilon, dim=1).sum(dim=0)
        assert (softmax_mass - n / k).abs().max() > 0.5 * n / k


def test_prototypes_are_unit_vectors_at_construction_and_after_each_step():
    model = make()
    assert torch.allclose(model.prototypes.weight.norm(dim=1), torch.ones(model.config.nmb_prototypes), atol=1e-6)
    config = build_config("swav", {"dataset": "synthetic", "backbone": "small", **TINY_HEADS, "base_lr": 10.0})
    optimizer = build_optimizer(model.parameter_groups(), config)
    batch = batch_for(model)
    model(batch).loss.backward()
    optimizer.step()
    stepped = model.prototypes.weight.detach().clone()
    assert (stepped.norm(dim=1) - 1).abs().max() > 1e-4  # the step alone leaves them off the sphere
    model.after_step(batch)
    torch.testing.assert_close(model.prototypes.weight, F.normalize(stepped, dim=1))
    assert torch.allclose(model.prototypes.weight.norm(dim=1), torch.ones(model.config.nmb_prototypes), atol=1e-6)


def test_prototypes_stay_fixed_through_the_first_epoch_while_the_rest_trains(tmp_path, monkeypatch):
    built = []

    def recording_build(*args, **kwargs):
        model = build_method(*args, **kwargs)
        built.append({k: v.clone() for k, v in model.state_dict().items()})
        return model

    monkeypatch.setattr(loop, "build_method", recording_build)
    assert make().frozen_parameters()[0][1] == 1
    pretrain(run_config(), tmp_path)
    initial = built[0]
    after_one = load_checkpoint(tmp_path / "checkpoints" / "epoch_0001.pt")["model"]
    after_two = load_checkpoint(tmp_path / "checkpoints" / "epoch_0002.pt")["model"]
    key = "prototypes.weight"
    # Unchanged up to the renormalisation's rounding, which the official loop also applies every step.
    torch.testing.assert_close(after_one[key], initial[key], rtol=0, atol=1e-6)
    assert (after_two[key] - after_one[key]).abs().max() > 1e-4
    for name in ("backbone.0.0.weight", "projector.0.weight"):
        assert (after_one[name] - initial[name]).abs().max() > 1e-4, name


def test_queue_is_used_once_full_with_the_scores_of_earlier_batches():
    model = make(queue_length=16, epoch_queue_starts=1, batch_size=8)
    cfg = model.config
    assert model.queue.shape == (2, 16, cfg.projector_dim)
    out = model(batch_for(model, seed=0, epoch=0))  # before epoch_queue_starts: neither filled nor used
    assert out.stats["queue_in_use"] == 0.0 and not model.queue.any()
    fills = []
    for seed in (1, 2):
        batch = batch_for(model, seed=seed, epoch=1)
        assert model(batch).stats["queue_in_use"] == 0.0  # not full yet
        z, _ = crop_embeddings(model, batch)
        fills.append(z[:16].detach().reshape(2, 8, -1))
    # Newest first: this batch's global embeddings, then the previous batch's.
    torch.testing.assert_close(model.queue, torch.cat([fills[1], fills[0]], dim=1), rtol=1e-5, atol=1e-6)
    queue_before = model.queue.clone()
    batch = batch_for(model, seed=3, epoch=1)
    out = model(batch)
    assert out.stats["queue_in_use"] == 1.0
    z, scores = crop_embeddings(model, batch)
    queue_scores = [model.prototypes(q) for q in queue_before]
    args = (cfg.temperature, cfg.epsilon, cfg.sinkhorn_iterations)
    torch.testing.assert_close(
        out.loss, swav_loss(scores[:2], scores[2:], *args, queue_scores=queue_scores), rtol=1e-5, atol=1e-6
    )
    assert not torch.allclose(out.loss, swav_loss(scores[:2], scores[2:], *args), rtol=1e-4)
    torch.testing.assert_close(model.queue[:, :8], z[:16].detach().reshape(2, 8, -1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.queue[:, 8:], queue_before[:, :8])


def test_queue_fills_from_its_epoch_in_a_checkpointed_buffer(tmp_path):
    seen = []
    pretrain(
        run_config(queue_length=32, epoch_queue_starts=1),
        tmp_path,
        progress_every=1,
        on_progress=lambda p: seen.append(p.stats["queue_in_use"]),
    )
    # Epoch 1 fills 16 embeddings a step: full after 2 steps, used from the third.
    assert seen == [0.0] * 7 + [1.0] * 3
    after_one = load_checkpoint(tmp_path / "checkpoints" / "epoch_0001.pt")["model"]["queue"]
    after_two = load_checkpoint(tmp_path / "checkpoints" / "epoch_0002.pt")["model"]["queue"]
    assert after_one.shape == (2, 32, TINY_HEADS["projector_dim"]) and not after_one.any()
    torch.testing.assert_close(after_two.norm(dim=2), torch.ones(2, 32))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            {"augmentation": "multicrop"},
            "swav takes its 2 global crops from the augmentation preset, and 'multicrop' makes 8",
        ),
        ({"local_crops": -1}, "local_crops must be at least 0, got -1"),
        ({"nmb_prototypes": 0}, "nmb_prototypes must be at least 1, got 0"),
        ({"temperature": 0.0}, "temperature must be greater than 0, got 0.0"),
        ({"sinkhorn_iterations": 0}, "sinkhorn_iterations must be at least 1, got 0"),
        ({"freeze_prototypes_epochs": -1}, "freeze_prototypes_epochs must be at least 0, got -1.0"),
        ({"queue_length": 100, "batch_size": 128}, "queue_length 100 is shorter than a batch"),
        ({"queue_length": 3840, "epochs": 10}, "epoch_queue_starts 15 is not before the end of the run"),
    ],
)
def test_config_errors_say_what_to_fix(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_config("swav", {"dataset": "synthetic", **overrides})


def test_accepted_corner_cases_build():
    config = build_config(
        "swav",
        {
            "dataset": "synthetic",
            "local_crops": 0,
            "queue_length": 200,
            "batch_size": 64,
            "epochs": 20,
            "freeze_prototypes_epochs": 0,
        },
    )
    model = build_method(config, 32, 64)
    assert len(type(model).view_specs(config.method_config, 32)) == 2 and model.frozen_parameters() == []

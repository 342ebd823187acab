"""DeepCluster-v2 against its defining mechanisms: k-means at epoch starts only (as the official
loop, checked against a float64 loop reference), prototypes fixed to the centroids, targets
looked up by sample index, a memory written at the batch's indices, and and the loss to the stored assignments."""

import pytest
import torch
import torch.nn.functional as F
from tiny import tiny_heads

import cssl_core.methods.deepclusterv2  # noqa: F401 (registers it)
from cssl_core.config import build_config
from cssl_core.errors import ConfigError
from cssl_core.methods import Batch, TrainingSet, build_method
from cssl_core.methods.deepclusterv2 import DeepClusterV2, spherical_kmeans

TINY_HEADS = tiny_heads("deepclusterv2")


def make(num_samples=64, **overrides):
    torch.manual_seed(0)
    config = build_config("deepclusterv2", {"dataset": "synthetic", "backbone": "small", **TINY_HEADS, **overrides})
    return build_method(config, 32, num_samples)


def training_set_for(model, images):
    calls = []

    def embed(module, batch_statistics=False):  # as the loop's, in index order, all in one batch
        calls.append(batch_statistics)
        was_training = model.training
        module.train(batch_statistics)
        with torch.no_grad():
            out = module(images).float()
        module.train(was_training)
        return out

    return TrainingSet(num_samples=len(images), steps_per_epoch=1, embed=embed), calls


def batch_for(model, indices, seed=0):
    g = torch.Generator().manual_seed(seed)
    sizes = [spec.size for spec in type(model).view_specs(model.config, 32)]
    views = [torch.randn(len(indices), 3, s, s, generator=g) for s in sizes]
    return Batch(views=views, indices=indices, step=0, epoch=0, schedules={"lr": 0.1, "weight_decay": 0.0})


def clustered(num_samples=64, epoch=0):
    """A model after its epoch-start k-means on random images, and those images' training set."""
    model = make(num_samples)
    images = torch.randn(num_samples, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    training_set, calls = training_set_for(model, images)
    model.on_epoch_start(epoch, training_set)
    return model, training_set, calls


def reference_kmeans(x, k, iterations, generator):
    """The official ``cluster_memory`` loop for one head, in float64; also counts empty clusters met."""
    x = x.double()
    centroids = x[torch.randperm(len(x), generator=generator)[:k]].clone()
    empties = 0
    for iteration in range(iterations + 1):
        assignments = (x @ centroids.T).argmax(dim=1)
        if iteration == iterations:
            break
        for c in range(k):
            members = x[assignments == c]
            if len(members):
                centroids[c] = members.sum(0) / len(members)
            else:
                empties += 1
        centroids = centroids / centroids.norm(dim=1, keepdim=True)
    return centroids, assignments, empties


def test_kmeans_matches_the_official_loop_with_empty_clusters_keeping_their_centroid():
    g = torch.Generator().manual_seed(0)
    rows = F.normalize(torch.randn(30, 8, generator=g), dim=1)
    x = torch.cat([rows, rows, F.normalize(torch.randn(20, 8, generator=g), dim=1)])  # duplicates: equal centroids
    centroids, assignments = spherical_kmeans(x, 25, 10, torch.Generator().manual_seed(3))
    ref_centroids, ref_assignments, empties = reference_kmeans(x, 25, 10, torch.Generator().manual_seed(3))
    assert empties > 0  # the empty-cluster rule was exercised
    assert torch.equal(assignments, ref_assignments)
    torch.testing.assert_close(centroids, ref_centroids.float(), rtol=0, atol=1e-6)
    torch.testing.assert_close(centroids.norm(dim=1), torch.ones(25))


def test_kmeans_is_deterministic_per_seed_epoch_and_head():
    model, _, _ = clustered()
    x = model.memory[0]
    first = spherical_kmeans(x, 12, 10, model.kmeans_generator(3, 1))
    again = spherical_kmeans(x, 12, 10, model.kmeans_generator(3, 1))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    other_epoch = spherical_kmeans(x, 12, 10, model.kmeans_generator(4, 1))
    other_head = spherical_kmeans(x, 12, 10, model.kmeans_generator(3, 2))
    assert not torch.equal(first[0], other_epoch[0]) and not torch.equal(first[0], other_head[0])
    # Two models with the same state cluster identically at the same epoch.
    twin, _, _ = clustered()
    assert torch.equal(model.assignments, twin.assignments)
    for a, b in zip(model.prototypes, twin.prototypes):
        assert torch.equal(a.weight, b.weight)


def test_epoch_start_fills_the_memory_once_and_sets_prototypes_to_the_centroids():
    model, training_set, calls = clustered()
    # The official init_memory: the untrained network in train mode, each batch's own statistics.
    assert calls == [True] and bool(model.memory_filled)
    embedded = training_set.embed(model.embedding_network(), batch_statistics=True)
    torch.testing.assert_close(model.memory, embedded.expand_as(model.memory))
    for head, k in enumerate(model.config.nmb_prototypes):
        memory = model.memory[head % 2]
        centroids, assignments = spherical_kmeans(
            memory, k, model.config.kmeans_iterations, model.kmeans_generator(0, head)
        )
        assert torch.equal(model.prototypes[head].weight, centroids)
        assert torch.equal(model.assignments[head], assignments)
        # The assignments are the nearest prototypes, by cosine, of the memory the head clustered.
        assert torch.equal(model.assignments[head], (memory @ model.prototypes[head].weight.T).argmax(1))
    model.on_epoch_start(1, training_set)
    assert len(calls) == 2  # our own call above; the model did not embed again


def test_memory_rows_change_only_at_the_batch_indices():
    model, _, _ = clustered()
    before = model.memory.clone()
    indices = torch.tensor([3, 17, 40, 41, 9, 63, 0, 22])
    batch = batch_for(model, indices)
    model(batch)
    n = len(indices)
    with torch.no_grad():
        views = batch.views
        features = torch.cat([model.backbone(torch.cat(views[:2])), model.backbone(torch.cat(views[2:]))])
        z = F.normalize(model.projector(features)[: 2 * n], dim=1).view(2, n, -1)
    torch.testing.assert_close(model.memory[:, indices], z)
    untouched = torch.ones(model.num_samples, dtype=torch.bool)
    untouched[indices] = False
    assert torch.equal(model.memory[:, untouched], before[:, untouched])


def test_loss_is_the_cross_entropy_to_the_stored_assignments_of_the_batch_indices():
    model, _, _ = clustered()
    indices = torch.arange(10, 26)
    batch = batch_for(model, indices)
    loss = model(batch).loss
    views, n, temperature = batch.views, len(indices), model.config.temperature
    features = torch.cat([model.backbone(torch.cat(views[:2])), model.backbone(torch.cat(views[2:]))])
    z = F.normalize(model.projector(features), dim=1)
    crops = len(views)
    reference = sum(
        F.cross_entropy(z @ p.weight.T / temperature, model.assignments[h, indices].repeat(crops))
        for h, p in enumerate(model.prototypes)
    ) / len(model.prototypes)
    torch.testing.assert_close(loss, reference)
    assert z.shape[0] == crops * n

    permuted = indices.roll(1)
    assert not torch.equal(model.assignments[:, indices], model.assignments[:, permuted])
    assert not torch.allclose(model(batch_for(model, permuted)).loss, loss)

    # Gradients reach the backbone, never the prototypes (set by k-means only, as the official code).
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in model.prototypes.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())


def test_assignments_change_at_an_epoch_start_and_not_within_an_epoch():
    model, training_set, calls = clustered(num_samples=32)
    start = model.assignments.clone()
    memory_start = model.memory.clone()
    optimizer = torch.optim.SGD([p for g in model.parameter_groups() for p in g["params"]], lr=0.5)
    for step, indices in enumerate(torch.randperm(32, generator=torch.Generator().manual_seed(0)).split(16)):
        loss = model(batch_for(model, indices, seed=step)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.after_step(batch_for(model, indices, seed=step))
        assert torch.equal(model.assignments, start)
    assert not torch.equal(model.memory, memory_start)
    model.on_epoch_start(1, training_set)
    assert len(calls) == 1  # the memory is filled once, at the first epoch
    assert not torch.equal(model.assignments, start)
    for head, k in enumerate(model.config.nmb_prototypes):
        expected = spherical_kmeans(model.memory[head % 2], k, 10, model.kmeans_generator(1, head))[1]
        assert torch.equal(model.assignments[head], expected)


def test_views_are_two_global_crops_then_the_local_ones():
    paper = build_config("deepclusterv2", {"dataset": "synthetic", "recipe": "paper"})
    specs = DeepClusterV2.view_specs(paper.method_config, 224)
    assert [s.size for s in specs] == [224, 224] + [96] * 6
    assert specs[0].crop_scale == (0.14, 1.0) and specs[2].crop_scale == (0.05, 0.14)
    small = build_config("deepclusterv2", {"dataset": "synthetic"})
    assert small.method_config.nmb_prototypes == (100, 100, 100)
    # Measured: lr 0.6 and eta 0.02 (SwAV's small-image values) 50.4% kNN, SimCLR's 0.3 and 0.05 49.5%.
    assert (small.method_config.base_lr, small.method_config.lars_eta) == (0.6, 0.02)
    assert (paper.method_config.base_lr, paper.method_config.lars_eta) == (0.3, 0.001)
    assert [s.size for s in DeepClusterV2.view_specs(small.method_config, 32)] == [32, 32, 14, 14]


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"nmb_prototypes": ()}, "nmb_prototypes"),
        ({"nmb_prototypes": (10, 0)}, "nmb_prototypes"),
        ({"nmb_prototypes": (-3,)}, "nmb_prototypes"),
        ({"nmb_prototypes": (400,), "subset": 300}, "nmb_prototypes"),
        ({"augmentation": "multicrop"}, "augmentation"),
        ({"local_crops": -1}, "local_crops"),
        ({"temperature": 0}, "temperature"),
    ],
)
def test_config_rejects_what_cannot_train(overrides, key):
    with pytest.raises(ConfigError, match=key):
        build_config("deepclusterv2", {"dataset": "synthetic", **overrides})


def test_more_clusters_than_training_images_is_a_config_error():
    with pytest.raises(ConfigError, match="nmb_prototypes"):
        make(num_samples=10)  # heads of 8, 12 and 16 clusters

"""The embedding protocol: the test split's features in 2-D, for a plot."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from torch import nn

from cssl_core.data import ImageDataset, load_dataset
from cssl_core.errors import ConfigError
from cssl_core.evaluation import evaluate_backbone, protocol_params
from cssl_core.evaluation.embedding import pca_2d

MEAN, STD = [0.5] * 3, [0.25] * 3
# A fixed feature extractor: each image pooled to 4x4 per channel (48 numbers).
POOLED = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten())


@pytest.fixture(scope="module")
def synthetic() -> ImageDataset:
    return load_dataset("synthetic")


def embed(data: ImageDataset, **params):
    return evaluate_backbone(POOLED, data, "embedding", mean=MEAN, std=STD, device=torch.device("cpu"), **params)


def two_classes(data: ImageDataset, a: int, b: int) -> ImageDataset:
    """The images of classes ``a`` and ``b`` only (labels keep indexing ``data.classes``)."""

    def keep(split):
        return split.subset((split.labels == a) | (split.labels == b))

    return ImageDataset(data.name, data.classes, keep(data.train), keep(data.test))


def one_nn_accuracy(points: np.ndarray, labels: np.ndarray) -> float:
    """Leave-one-out 1-nearest-neighbour accuracy in the plane."""
    distances = ((points[:, None, :] - points[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(distances, np.inf)
    return float((labels[distances.argmin(1)] == labels).mean())


def test_every_sampled_image_is_a_point_with_its_label(synthetic):
    result = embed(synthetic, max_points=50)
    assert result.top1 is None and result.top5 is None and result.protocol == "embedding"
    assert result.extra["reduction"] == "pca" and result.extra["classes"] == synthetic.classes
    points = result.extra["points"]
    assert len(points) == result.num_test == 50 and result.num_train == 0
    labels = [label for _, _, label in points]
    assert all(isinstance(label, int) and 0 <= label < len(synthetic.classes) for label in labels)
    assert sorted(np.bincount(labels).tolist()) == [5] * 10  # class-balanced, not proportional
    assert all(round(x, 4) == x and round(y, 4) == y for x, y, _ in points)
    # A split no larger than max_points is embedded whole, in its order.
    whole = embed(synthetic).extra["points"]
    assert [label for _, _, label in whole] == synthetic.test.labels.tolist()


def test_pca_is_deterministic_for_a_seed_and_the_seed_picks_the_subset(synthetic):
    first, again = embed(synthetic, max_points=60, seed=3), embed(synthetic, max_points=60, seed=3)
    assert first.extra["points"] == again.extra["points"]
    assert embed(synthetic, max_points=60, seed=4).extra["points"] != first.extra["points"]


def test_pca_matches_scikit_learn_up_to_each_axis_sign():
    from sklearn.decomposition import PCA

    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 16, generator=g, dtype=torch.float64) * torch.linspace(3, 0.1, 16, dtype=torch.float64)
    ours = pca_2d(x).numpy()
    theirs = PCA(n_components=2, svd_solver="full").fit_transform(x.numpy())
    for axis in range(2):
        sign = np.sign(ours[:, axis] @ theirs[:, axis])
        np.testing.assert_allclose(ours[:, axis], sign * theirs[:, axis], atol=1e-9)
    assert ours[:, 0].var() > ours[:, 1].var()  # the first axis is the widest


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_two_different_classes_come_apart(synthetic, method):
    # Red disks and blue squares: a 1-NN in the plane tells them apart far better than chance (50%).
    data = two_classes(synthetic, 0, 2)
    result = embed(data, method=method, perplexity=10)
    points = np.array([[x, y] for x, y, _ in result.extra["points"]])
    labels = np.array([label for _, _, label in result.extra["points"]])
    assert set(labels.tolist()) == {0, 2} and len(labels) == len(data.test.labels)
    assert one_nn_accuracy(points, labels) > 0.8
    # The same points with shuffled labels are at chance: the test can tell a picture from noise.
    shuffled = np.random.default_rng(0).permutation(labels)
    assert one_nn_accuracy(points, shuffled) < 0.7


def test_reductions_and_their_parameters_are_checked(synthetic):
    with pytest.raises(ConfigError, match="method must be one of pca, tsne, umap"):
        protocol_params("embedding", {"method": "mds"})
    with pytest.raises(ConfigError, match="max_points must be in"):
        protocol_params("embedding", {"max_points": 1})
    with pytest.raises(ConfigError, match="perplexity must be less than the number of points"):
        embed(synthetic, max_points=20, method="tsne", perplexity=25)
    if importlib.util.find_spec("umap") is None:
        with pytest.raises(ConfigError, match="umap-learn"):
            embed(synthetic, max_points=20, method="umap")
    else:
        assert len(embed(synthetic, max_points=20, method="umap").extra["points"]) == 20

"""A picture of the feature space: the test split's features in two dimensions.

No accuracy: the encoder embeds a seeded, class-balanced subset of the test images, the
features are L2-normalised (the geometry kNN sees) and reduced to 2-D by PCA (an exact SVD,
deterministic), by t-SNE (van der Maaten and Hinton, JMLR 2008; scikit-learn's) or by UMAP
(McInnes et al., arXiv 1802.03426; needs the umap-learn package).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cssl_core.config import check_bounds, option
from cssl_core.data import class_balanced_indices
from cssl_core.errors import ConfigError
from cssl_core.evaluation.features import extract_features
from cssl_core.evaluation.protocol import Protocol, register_protocol
from cssl_core.evaluation.result import ProtocolOutput

REDUCTIONS = ("pca", "tsne", "umap")


@dataclass
class EmbeddingParams:
    max_points: int = option(
        2000, "test images embedded: a seeded, class-balanced subset of a larger split", ge=3, le=20000
    )
    method: str = option("pca", "reduction to 2-D: pca, tsne or umap (umap needs the umap-learn package)")
    perplexity: float = option(
        30.0, "t-SNE's perplexity: about the neighbours each point keeps; less than the number of points", gt=0
    )
    seed: int = option(0, "seed of the subset and of t-SNE and UMAP", ge=0, le=2**32 - 1)

    def validate(self) -> None:
        check_bounds(self)
        if self.method not in REDUCTIONS:
            raise ConfigError(f"method must be one of {', '.join(REDUCTIONS)}, got {self.method!r}")


@register_protocol
class EmbeddingProtocol(Protocol):
    name = "embedding"
    summary = "a picture of the feature space: the test split's frozen features in two dimensions, no accuracy"
    params_cls = EmbeddingParams
    accuracy = False
    extra = {
        "reduction": "how the features went to 2-D: pca, tsne or umap",
        "points": "[x, y, label] rows, one per embedded test image, coordinates rounded to 4 decimals",
        "classes": "the class names the labels index",
    }

    def run_features(
        self,
        backbone: nn.Module,
        data,
        params: EmbeddingParams,
        mean: list[float],
        std: list[float],
        device: torch.device,
    ) -> ProtocolOutput:
        chosen = embedding_subset(data.test.labels, params)
        features = extract_features(backbone, data.test.images[chosen], mean, std, device)
        xy = reduce_to_2d(features, params)
        labels = data.test.labels[chosen].tolist()
        points = [[round(x, 4), round(y, 4), label] for (x, y), label in zip(xy.tolist(), labels, strict=True)]
        return ProtocolOutput(
            top1=None,
            top5=None,
            num_train=0,
            num_test=len(points),
            extra={"reduction": params.method, "points": points, "classes": list(data.classes)},
        )


def embedding_subset(labels: torch.Tensor, params: EmbeddingParams) -> torch.Tensor:
    """Indices into the test split: all of it, or ``max_points`` of it with the classes balanced."""
    if len(labels) <= params.max_points:
        return torch.arange(len(labels))
    return class_balanced_indices(labels, params.max_points, params.seed)


def reduce_to_2d(features: torch.Tensor, params: EmbeddingParams) -> torch.Tensor:
    """features: (N, D) -> (N, 2) float64 coordinates."""
    x = F.normalize(features.double(), dim=1)
    if params.method == "pca":
        return pca_2d(x)
    if params.method == "tsne":
        from sklearn.manifold import TSNE

        if params.perplexity >= len(x):
            raise ConfigError(f"perplexity must be less than the number of points ({len(x)}), got {params.perplexity}")

        reducer = TSNE(n_components=2, perplexity=params.perplexity, init="pca", random_state=params.seed)
    else:
        if importlib.util.find_spec("umap") is None:
            raise ConfigError(
                "method umap needs the umap-learn package, which this worker does not have; "
                "install it (pip install umap-learn) or use method pca or tsne"
            )
        import umap

        reducer = umap.UMAP(n_components=2, n_neighbors=max(2, min(15, len(x) - 1)), random_state=params.seed)
    return torch.from_numpy(reducer.fit_transform(x.numpy())).double()


def pca_2d(x: torch.Tensor) -> torch.Tensor:
    """The projection of ``x`` (N, D) on its two principal axes, by an exact SVD of the centred
    data; each axis's sign is fixed so that its largest loading is positive, so the same features
    always give the same picture."""
    centred = x - x.mean(0)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    axes = vh[:2]  # (2, D)
    signs = axes.gather(1, axes.abs().argmax(1, keepdim=True)).sign()
    axes = axes * torch.where(signs == 0, 1.0, signs)
    if axes.shape[0] < 2:  # one feature dimension: the second axis is flat
        axes = torch.cat([axes, torch.zeros_like(axes)])
    return centred @ axes.T

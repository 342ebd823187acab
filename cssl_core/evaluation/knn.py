"""Weighted k-nearest-neighbour classification on features (Wu et al., InstDisc, arXiv 1805.01978, Sec. 3.4)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cssl_core.config import check_bounds, option
from cssl_core.evaluation.features import extract_features
from cssl_core.evaluation.protocol import Protocol, register_protocol
from cssl_core.evaluation.result import ProtocolOutput, topk_accuracy


@dataclass
class KnnParams:
    k: int = option(200, "neighbours that vote", ge=1)
    temperature: float = option(0.1, "a neighbour's vote is exp(similarity / temperature)", gt=0)

    def validate(self) -> None:
        check_bounds(self)


@register_protocol
class KnnProtocol(Protocol):
    name = "knn"
    summary = "weighted k-nearest-neighbour classification of the test split on the frozen training features"
    params_cls = KnnParams

    def run_features(
        self, backbone: nn.Module, data, params: KnnParams, mean: list[float], std: list[float], device: torch.device
    ) -> ProtocolOutput:
        train, test = data.train, data.test
        labelled = train.labels >= 0
        train_features = extract_features(backbone, train.images[labelled], mean, std, device)
        test_features = extract_features(backbone, test.images, mean, std, device)
        scores = knn_scores(
            train_features, train.labels[labelled], test_features, len(data.classes), params.k, params.temperature
        )
        top1, top5 = topk_accuracy(scores, test.labels)
        return ProtocolOutput(top1=top1, top5=top5, num_train=int(labelled.sum()), num_test=len(test.labels))


@torch.no_grad()
def knn_scores(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Class votes (M, C): each of the k nearest training rows (cosine) votes ``exp(cos / T)``.

    train_features: (N, D), train_labels: (N,), test_features: (M, D); features are
    L2-normalised inside. Test rows are processed in chunks to bound memory at chunk x N.
    """
    train = F.normalize(train_features.float(), dim=1)
    test = F.normalize(test_features.float(), dim=1)
    k = min(k, train.shape[0])
    scores = []
    for start in range(0, test.shape[0], chunk_size):
        sim = test[start : start + chunk_size] @ train.T  # (m, N)
        top_sim, top_idx = sim.topk(k, dim=1)  # (m, k)
        weights = (top_sim / temperature).exp()
        votes = torch.zeros(sim.shape[0], num_classes, device=sim.device)
        votes.scatter_add_(1, train_labels[top_idx], weights)
        scores.append(votes)
    return torch.cat(scores)


def knn_predict(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
) -> torch.Tensor:
    """Top-1 class per test row, shape (M,)."""
    return knn_scores(train_features, train_labels, test_features, num_classes, k, temperature).argmax(dim=1)

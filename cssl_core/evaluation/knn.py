"""Weighted k-nearest-neighbour classification on features (Wu et al., InstDisc, arXiv 1805.01978, Sec. 3.4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def knn_scores(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
               num_classes: int, k: int = 200, temperature: float = 0.1, chunk_size: int = 1024) -> torch.Tensor:
    """Class votes (M, C): each of the k nearest training rows (cosine) votes ``exp(cos / T)``.

    train_features: (N, D), train_labels: (N,), test_features: (M, D); features are
    L2-normalised inside. Test rows are processed in chunks to bound memory at chunk x N.
    """
    train = F.normalize(train_features.float(), dim=1)
    test = F.normalize(test_features.float(), dim=1)
    k = min(k, train.shape[0])
    scores = []
    for start in range(0, test.shape[0], chunk_size):
        sim = test[start:start + chunk_size] @ train.T  # (m, N)
        top_sim, top_idx = sim.topk(k, dim=1)  # (m, k)
        weights = (top_sim / temperature).exp()
        votes = torch.zeros(sim.shape[0], num_classes, device=sim.device)
        votes.scatter_add_(1, train_labels[top_idx], weights)
        scores.append(votes)
    return torch.cat(scores)


def knn_predict(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                num_classes: int, k: int = 200, temperature: float = 0.1) -> torch.Tensor:
    """Top-1 class per test row, shape (M,)."""
    return knn_scores(train_features, train_labels, test_features, num_classes, k, temperature).argmax(dim=1)

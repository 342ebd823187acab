"""SwAV's Sinkhorn-Knopp codes (arXiv 2006.09882, Sec. 3.1, Eq. 3 and Alg. 1, the official
``distributed_sinkhorn`` on one process)."""

import torch

from cssl_core.losses.precision import full_precision


@full_precision
@torch.no_grad()
def sinkhorn(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """scores: (B, K) dot products of unit features and unit prototypes. Returns codes (B, K).

    ``Q = exp(scores / epsilon)^T`` (K, B) is normalised to total mass 1, then each of
    ``iterations`` rounds gives every prototype (row) mass 1/K and every sample (column)
    mass 1/B. The result is multiplied by B, so each row of the returned codes sums to 1 and,
    as the rounds converge, each prototype receives B/K of the batch. No gradient flows.
    """
    scores = scores.detach().float()
    n_samples, n_prototypes = scores.shape
    # Subtracting one constant multiplies every entry of Q by the same factor, which the first
    # normalisation to total mass 1 cancels exactly; it only keeps exp() from overflowing.
    q = torch.exp((scores - scores.max()) / epsilon).T  # (K, B)
    q /= q.sum()
    for _ in range(iterations):
        q /= q.sum(dim=1, keepdim=True) * n_prototypes  # each prototype: mass 1/K
        q /= q.sum(dim=0, keepdim=True) * n_samples  # each sample: mass 1/B
    return (q * n_samples).T

"""MoCo v3's symmetric in-batch InfoNCE (arXiv 2104.02057, Sec. 3 Eq. 1 and Alg. 1)."""

import torch
import torch.nn.functional as F

from cssl_core import distributed
from cssl_core.losses.precision import full_precision


def _contrastive(q: torch.Tensor, k: torch.Tensor, temperature: float) -> torch.Tensor:
    q = F.normalize(q.float(), dim=1)
    # No gradient to keys; on several processes every rank's keys (official concat_all_gather).
    k = distributed.gather_no_grad(F.normalize(k.detach().float(), dim=1))
    logits = q @ k.T / temperature  # (n, N): positives where the key is the query's own image
    targets = torch.arange(q.shape[0], device=q.device) + distributed.rank() * q.shape[0]
    # Alg. 1's factor 2T: the T cancels the 1/T that dividing the logits puts on the gradient.
    return F.cross_entropy(logits, targets) * (2 * temperature)


@full_precision
def mocov3_loss(
    q1: torch.Tensor, q2: torch.Tensor, k1: torch.Tensor, k2: torch.Tensor, temperature: float = 0.2
) -> torch.Tensor:
    """q1, q2: (N, D) predictor outputs of the two views; k1, k2: (N, D) momentum-encoder
    outputs of the same views (normalised inside, detached inside).

    Returns ``ctr(q1, k2) + ctr(q2, k1)``, with ``ctr(q, k)`` the cross-entropy of
    ``q k^T / T`` against the diagonal, times ``2T``.
    """
    return _contrastive(q1, k2, temperature) + _contrastive(q2, k1, temperature)

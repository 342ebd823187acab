"""InfoNCE with a queue of negatives, as in MoCo (arXiv 1911.05722, Sec. 3.1 and Alg. 1)."""

import torch
import torch.nn.functional as F

from cssl_core.losses.precision import full_precision


@full_precision
def info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """q: (N, D) queries; k: (N, D) keys (their positives); queue: (K, D) negatives.

    All three are L2-normalised inside. Logits are ``[q.k, q.queue^T] / T`` of shape
    (N, 1 + K), the positive at index 0; the loss is their cross-entropy with target 0.
    No gradient flows into the keys or the queue.
    """
    q = F.normalize(q.float(), dim=1)
    k = F.normalize(k.detach().float(), dim=1)
    queue = F.normalize(queue.detach().float(), dim=1)
    l_pos = (q * k).sum(dim=1, keepdim=True)  # (N, 1)
    l_neg = q @ queue.T  # (N, K)
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature  # (N, 1 + K)
    targets = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, targets)

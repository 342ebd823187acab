"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR (arXiv 2002.05709, Sec. 2.1, Alg. 1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cssl_core import distributed
from cssl_core.losses.precision import full_precision


@full_precision
def nt_xent(
    z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5, memory: torch.Tensor | None = None
) -> torch.Tensor:
    """Loss over the 2N views of a batch.

    z1, z2: (N, D) projections of two views of the same N images (normalised inside).
    Each of the 2N views is an anchor whose positive is its pair and whose negatives are the
    other 2N - 2 views, plus the K rows of ``memory`` (K, D) when given (SimCLR v2's MoCo-style
    memory, arXiv 2006.10029 Sec. 2; no gradient flows into it). Returns the mean over the 2N
    anchors (a scalar).

    On several processes z1 and z2 are this rank's share (n, D) of the global batch: its 2n
    anchors take their negatives from every rank's views, gathered with gradients, and the mean
    over ranks of the returned means is the one-process loss.
    """
    n = z1.shape[0]
    anchors = F.normalize(torch.cat([z1, z2]).float(), dim=1)  # (2n, D)
    # Every rank's views, gathered: (2N, D) as [all z1; all z2], the one-process order.
    candidates = torch.cat([distributed.gather(anchors[:n]), distributed.gather(anchors[n:])])
    total, offset = candidates.shape[0] // 2, distributed.rank() * n
    logits = anchors @ candidates.T / temperature  # (2n, 2N) cosine similarities / T
    own = torch.arange(offset, offset + n, device=logits.device)
    # An anchor is not its own negative: drop its own column from the softmax.
    logits[torch.arange(2 * n, device=logits.device), torch.cat([own, own + total])] = float("-inf")
    if memory is not None:
        memory = F.normalize(memory.detach().float(), dim=1)
        logits = torch.cat([logits, anchors @ memory.T / temperature], dim=1)  # (2n, 2N + K)
    targets = torch.cat([own + total, own])
    return F.cross_entropy(logits, targets)

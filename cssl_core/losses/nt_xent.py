"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR (arXiv 2002.05709, Sec. 2.1, Alg. 1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

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
    """
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)  # (2N, D)
    logits = z @ z.T / temperature  # (2N, 2N) cosine similarities / T
    # An anchor is not its own negative: drop the diagonal from the softmax.
    logits.fill_diagonal_(float("-inf"))
    if memory is not None:
        memory = F.normalize(memory.detach().float(), dim=1)
        logits = torch.cat([logits, z @ memory.T / temperature], dim=1)  # (2N, 2N + K)
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, targets)

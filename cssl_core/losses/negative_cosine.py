"""Negative cosine similarity with a stop-gradient, as in SimSiam (arXiv 2011.10566, Alg. 1)
and, up to a constant, BYOL's normalised MSE (arXiv 2006.07733, Eq. 2: ``2 - 2 cos``)."""

import torch
import torch.nn.functional as F

from cssl_core.losses.precision import full_precision


@full_precision
def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """p: (N, D) predictions; z: (N, D) targets. Returns ``-cos(p, z).mean()``.

    The stop-gradient on ``z`` is applied here, so callers cannot forget it.
    """
    return -F.cosine_similarity(p.float(), z.detach().float(), dim=-1).mean()

"""Barlow Twins' redundancy-reduction loss (arXiv 2103.03230, Sec. 2 and Alg. 1)."""

import torch

from cssl_core import distributed
from cssl_core.losses.precision import full_precision


@full_precision
def barlow_twins(z1: torch.Tensor, z2: torch.Tensor, lambd: float = 0.0051) -> torch.Tensor:
    """z1, z2: (N, D) embeddings of two views.

    Each view is standardised over the batch (biased variance, eps 1e-5), the cross-correlation
    is ``C = z1^T z2 / N`` (D, D), and the loss is
    ``sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2``.

    On several processes z1 and z2 are this rank's share of the global batch: the means,
    variances and C are summed over ranks, so every rank computes the one-process loss.
    """
    total = z1.shape[0] * distributed.world_size()
    z1 = _standardise(z1.float(), total)
    z2 = _standardise(z2.float(), total)
    c = distributed.global_sum(z1.T @ z2) / total  # (D, D)
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    off_diag = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
    return on_diag + lambd * off_diag


def _standardise(z: torch.Tensor, total: int) -> torch.Tensor:
    """Zero mean and unit (biased) variance per dimension over the ``total`` rows of every rank."""
    mean = distributed.global_sum(z.sum(0)) / total
    centred = z - mean
    var = distributed.global_sum(centred.pow(2).sum(0)) / total
    return centred / torch.sqrt(var + 1e-5)

"""Barlow Twins' redundancy-reduction loss (arXiv 2103.03230, Sec. 2 and Alg. 1)."""

import torch

from cssl_core.losses.precision import full_precision


@full_precision
def barlow_twins(z1: torch.Tensor, z2: torch.Tensor, lambd: float = 0.0051) -> torch.Tensor:
    """z1, z2: (N, D) embeddings of two views.

    Each view is standardised over the batch (biased variance, eps 1e-5), the cross-correlation
    is ``C = z1^T z2 / N`` (D, D), and the loss is
    ``sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2``.
    """
    n = z1.shape[0]
    z1 = z1.float()
    z2 = z2.float()
    z1 = (z1 - z1.mean(0)) / torch.sqrt(z1.var(0, unbiased=False) + 1e-5)
    z2 = (z2 - z2.mean(0)) / torch.sqrt(z2.var(0, unbiased=False) + 1e-5)
    c = z1.T @ z2 / n  # (D, D)
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    off_diag = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
    return on_diag + lambd * off_diag

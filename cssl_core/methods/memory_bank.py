"""A memory bank of one L2-normalised feature per training image, as in Instance Discrimination
(Wu et al., arXiv 1805.01978, Sec. 3.1-3.2; official code ``lib/NCEAverage.py`` of
zhirongw/lemniscate.pytorch).

Each row is updated by a momentum mix of its old value and the image's newest feature, then
renormalised; the noise (negative) rows are drawn uniformly over the bank (the paper's uniform
noise distribution Pn = 1 / n).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cssl_core import distributed
from cssl_core.losses.precision import full_precision


class MemoryBank(nn.Module):
    """``features``: (num_samples, dim) buffer of unit rows, in the training split's index order."""

    features: torch.Tensor

    def __init__(self, num_samples: int, dim: int):
        super().__init__()
        # lemniscate's init: uniform in [-1/sqrt(dim/3), 1/sqrt(dim/3)] (unit expected norm),
        # here also normalised so every row is on the sphere from the first step. Drawn from the
        # global RNG, so a seeded build makes the same bank.
        stdv = 1.0 / math.sqrt(dim / 3)
        bank = torch.rand(num_samples, dim).mul_(2 * stdv).sub_(stdv)
        self.register_buffer("features", F.normalize(bank, dim=1))

    @property
    def num_samples(self) -> int:
        return self.features.shape[0]

    @torch.no_grad()
    def negatives(self, n: int, k: int) -> torch.Tensor:
        """(n, k, dim) rows drawn uniformly with replacement (the bank's device, global RNG).

        As in lemniscate, a draw may hit the anchor's own row; with k << num_samples that is rare
        and is part of the NCE noise model, whose Pn = 1 / num_samples covers every row.
        On several processes ``n`` is this rank's share of the global batch: every rank draws the
        global batch's rows (its generator stays in step with the others') and takes its own.
        """
        world, rank = distributed.world_size(), distributed.rank()
        idx = torch.randint(0, self.num_samples, (n * world, k), device=self.features.device)
        return self.features[idx[rank * n : (rank + 1) * n]]

    @torch.no_grad()
    def update(self, indices: torch.Tensor, features: torch.Tensor, momentum: float) -> None:
        """Rows at ``indices`` (N,) <- normalize(m * old + (1 - m) * new) for ``features`` (N, dim).

        Indices are assumed distinct within a batch (a sampler without replacement), as in lemniscate's
        ``index_copy_``. On several processes every rank's rows are written, so each rank keeps the
        whole bank as one process has it.
        """
        indices, features = distributed.gather_no_grad(indices), distributed.gather_no_grad(features.detach())
        old = self.features[indices]
        mixed = old.mul(momentum).add_(features.detach().to(old.dtype), alpha=1.0 - momentum)
        self.features[indices] = F.normalize(mixed, dim=1)


@full_precision
def bank_logits(
    f: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """f: (N, D) unit features; positives: (N, D) and negatives: (N, K, D) bank rows.

    Returns ``f . v / T`` for the positives (N,) and the negatives (N, K), in float32.
    """
    f = f.float()
    pos = (f * positives.float()).sum(dim=1) / temperature  # (N,)
    neg = torch.bmm(negatives.float(), f.unsqueeze(2)).squeeze(2) / temperature  # (N, K)
    return pos, neg

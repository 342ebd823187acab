"""Invariant and spreading instance loss (Ye et al., arXiv 1904.03436, Sec. 3), as the official
``BatchCriterion`` (mangye16/Unsupervised_Embedding_Learning, ``BatchAverage.py``) computes it."""

import torch
import torch.nn.functional as F

from cssl_core import distributed
from cssl_core.losses.precision import full_precision


@full_precision
def invaspread_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """z1, z2: (N, D) embeddings of two augmentations of the same N images (normalised inside).

    The 2N features x are treated alike: for each x_i, P(j | x_i) = exp(x_j . x_i / T) /
    sum_{k != i} exp(x_k . x_i / T) over the other 2N - 1 features of the batch. With p(i) the
    index of x_i's other augmentation, the loss is
    ``-(1 / 2N) sum_i [log P(p(i) | x_i) + sum_{j not in {i, p(i)}} log(1 - P(j | x_i))]``,
    the paper's -log P(i | x^_i) - sum_{j != i} log(1 - P(i | x_j)) over both halves.

    As the official code (``x.t().data``, ``reordered_x.data``), the features on the
    instance side of every inner product are constants: each feature gets its gradient as the
    query of its own row only. Returns a scalar.

    On several processes z1 and z2 are this rank's share (n, D): its 2n queries meet every rank's
    instances (gathered, constants anyway), and the mean over ranks is the one-process loss.
    """
    n = z1.shape[0]
    x = F.normalize(torch.cat([z1, z2]).float(), dim=1)  # (2n, D): this rank's queries
    # Every rank's features as instances, in the one-process order [all z1; all z2]: (2N, D).
    instances = torch.cat([distributed.gather_no_grad(x[:n].detach()), distributed.gather_no_grad(x[n:].detach())])
    total, own = instances.shape[0] // 2, torch.arange(n, device=x.device) + distributed.rank() * n
    logits = x @ instances.T / temperature  # (2n, 2N); row i: x_i the query, columns the instances
    rows = torch.arange(2 * n, device=x.device)
    self_mask = torch.zeros_like(logits, dtype=torch.bool)
    self_mask[rows, torch.cat([own, own + total])] = True
    log_p = logits.masked_fill(self_mask, float("-inf")).log_softmax(dim=1)  # log P(j | x_i), -inf at j = i
    partner = torch.cat([own + total, own])
    log_p_positive = log_p[rows, partner]  # (2n,)
    # log(1 - P) for every negative: the official code subtracts the positive's term from the
    # row sum; masking it out gives the same sum without cancellation.
    negative_mask = ~self_mask
    negative_mask[rows, partner] = False
    log_not = torch.log1p(-log_p.exp().masked_fill(~negative_mask, 0.0))  # (2n, 2N), 0 off the negatives
    return -(log_p_positive + log_not.sum(dim=1)).mean()

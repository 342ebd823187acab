"""Softmax cross-entropy over a positive and K noise samples: CMC's ``NCESoftmaxLoss`` (arXiv 1906.05849, Eq. 2)."""

import torch
import torch.nn.functional as F

from cssl_core.losses.precision import full_precision


@full_precision
def nce_softmax_loss(pos_logits: torch.Tensor, neg_logits: torch.Tensor) -> torch.Tensor:
    """pos_logits: (N,) and neg_logits: (N, K), each a similarity / T of an anchor.

    The cross-entropy of each row of logits ``[pos, neg_1 .. neg_K]`` (N, 1 + K) with target 0,
    ``-(1/N) sum_n log(exp(pos_n) / (exp(pos_n) + sum_k exp(neg_nk)))``, as CMC's official code
    for its ResNets (the InfoNCE of CPC); the exact softmax over 1 + K, where NCE estimates a
    softmax over the whole dataset. Returns a scalar.
    """
    logits = torch.cat([pos_logits.float()[:, None], neg_logits.float()], dim=1)  # (N, 1 + K)
    targets = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, targets)

"""Noise-contrastive estimation of the instance softmax, as in Instance Discrimination
(arXiv 1805.01978, Sec. 3.2, Eq. 5-7)."""

import math

import torch
import torch.nn.functional as F

from cssl_core.losses.precision import full_precision

# Where the normalising constant Z of :func:`nce_loss` comes from (see :func:`update_log_z`).
Z_ESTIMATES = ("first_batch", "every_step")


@full_precision
def nce_loss(
    pos_logits: torch.Tensor, neg_logits: torch.Tensor, log_z: float | torch.Tensor, num_samples: int
) -> torch.Tensor:
    """pos_logits: (N,) and neg_logits: (N, K), each ``v . f / T`` (before the exp).

    With P(i|v) = exp(logit) / Z and noise Pn = 1 / num_samples, the posterior that a sample
    came from the data is h = P / (P + K Pn); the loss is
    ``-(1/N) sum_n [log h(pos_n) + sum_k log(1 - h(neg_nk))]``, the per-batch mean of
    lemniscate's ``NCECriterion``. ``log_z`` is the log of the normalising constant Z, a
    constant: no gradient flows into it. Returns a scalar.
    """
    k = neg_logits.shape[1]
    # h = P / (P + K Pn) = sigmoid(log P - log(K Pn)): log-sigmoid keeps both log h and
    # log(1 - h) finite where exp(logit) / Z over- or underflows (lemniscate adds eps=1e-7 instead).
    log_noise = math.log(k / num_samples)
    log_z = torch.as_tensor(log_z, dtype=torch.float32, device=pos_logits.device).detach()
    pos = pos_logits.float() - log_z - log_noise  # (N,)
    neg = neg_logits.float() - log_z - log_noise  # (N, K)
    return -(F.logsigmoid(pos).sum() + F.logsigmoid(-neg).sum()) / pos_logits.shape[0]


@torch.no_grad()
def nce_posteriors(
    pos_logits: torch.Tensor, neg_logits: torch.Tensor, log_z: float | torch.Tensor, num_samples: int
) -> dict[str, torch.Tensor]:
    """What :func:`nce_loss` sees, as 0-d tensors: ``positive_h``, the mean posterior h of the
    positives (near 1 when the data are told from the noise), and ``noise_h_sum``, the posteriors
    of one image's K noise rows summed, averaged over the batch. The noise term's gradient scales
    with it: past ~10 it outweighs the positive's, and pushes every image's feature the same way."""
    log_noise = math.log(neg_logits.shape[1] / num_samples)
    log_z = torch.as_tensor(log_z, dtype=torch.float32, device=pos_logits.device)
    return {
        "positive_h": torch.sigmoid(pos_logits.float() - log_z - log_noise).mean(),
        "noise_h_sum": torch.sigmoid(neg_logits.float() - log_z - log_noise).sum(dim=1).mean(),
    }


@torch.no_grad()
def nce_log_z(pos_logits: torch.Tensor, neg_logits: torch.Tensor, num_samples: int) -> torch.Tensor:
    """log Z, Z = mean(exp(logit)) * num_samples over a batch's N (1 + K) logits (pos (N,), neg
    (N, K)): the normalising constant InstDisc estimates once, from its first batch (Sec. 3.2;
    the official ``NCEAverage``). A 0-d float32 tensor."""
    logits = torch.cat([pos_logits[:, None], neg_logits], dim=1).flatten().float()
    return torch.logsumexp(logits, 0) - math.log(logits.numel()) + math.log(num_samples)


@torch.no_grad()
def update_log_z(log_z: torch.Tensor, estimated: torch.Tensor, estimate: torch.Tensor, mode: str) -> None:
    """Set the buffer ``log_z`` in place from this batch's ``estimate`` (:func:`nce_log_z`, same shape).

    ``first_batch``: the first batch's estimate, kept afterwards (the paper's Sec. 3.2 and the
    official ``NCEAverage``; ``estimated``, a 0-d bool buffer, records that it was made).
    ``every_step``: this batch's own estimate, so Z follows the bank as it fills with the
    network's features. ``torch.where`` rather than an ``if`` on the flag: no device sync per step.
    """
    log_z.copy_(estimate if mode == "every_step" else torch.where(estimated, log_z, estimate))
    estimated.fill_(True)

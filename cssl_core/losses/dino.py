"""DINO's cross-entropy between a centred, sharpened teacher and the student over crop pairs
(arXiv 2104.14294, Sec. 3.1 and Alg. 1, the official ``DINOLoss``)."""

import torch
import torch.nn.functional as F

from cssl_core.losses.precision import full_precision


@full_precision
def dino_loss(
    student_out: list[torch.Tensor],
    teacher_out: list[torch.Tensor],
    center: torch.Tensor,
    student_temp: float = 0.1,
    teacher_temp: float = 0.04,
) -> torch.Tensor:
    """student_out: (B, K) head outputs for all crops, the first ``len(teacher_out)`` being the
    global crops; teacher_out: (B, K) teacher outputs for the global crops; center: (1, K) or (K,).

    ``p_t = softmax((t - center) / teacher_temp)`` with no gradient, ``log p_s =
    log_softmax(s / student_temp)``; the loss is ``-sum_k p_t log p_s`` averaged over the batch
    and over every (teacher view, student view) pair of different views. The centre is not
    updated here: the caller owns it (Alg. 1: ``C = m*C + (1-m)*cat([t1, t2]).mean(0)``).
    """
    center = center.detach().float().reshape(1, -1)
    # Centring keeps one dimension from dominating, sharpening (low temperature) keeps the
    # teacher from going uniform; the two together avoid collapse (Sec. 3.1).
    teacher_probs = [F.softmax((t.detach().float() - center) / teacher_temp, dim=1) for t in teacher_out]
    student_log_probs = [F.log_softmax(s.float() / student_temp, dim=1) for s in student_out]
    total, n_pairs = 0.0, 0
    for iq, p_t in enumerate(teacher_probs):
        for v, log_p_s in enumerate(student_log_probs):
            if v == iq:  # a view is never asked to predict itself
                continue
            total = total + (-p_t * log_p_s).sum(dim=1).mean()
            n_pairs += 1
    if n_pairs == 0:
        raise ValueError("dino_loss needs at least one pair of different views")
    return total / n_pairs

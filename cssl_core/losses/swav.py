"""SwAV's swapped prediction loss with multi-crop (arXiv 2006.09882, Sec. 3.1 Eq. 1-2, Sec. 3.2)."""

import torch
import torch.nn.functional as F

from cssl_core import distributed
from cssl_core.losses.precision import full_precision
from cssl_core.losses.sinkhorn import sinkhorn


@full_precision
def swav_loss(
    high_res: list[torch.Tensor],
    low_res: list[torch.Tensor],
    temperature: float = 0.1,
    epsilon: float = 0.05,
    iterations: int = 3,
    queue_scores: list[torch.Tensor | None] | None = None,
) -> torch.Tensor:
    """high_res: global crops, each (B, K) prototype scores; low_res: local crops, each (B, K),
    possibly none. queue_scores: optional, one (Q, K) tensor or None per global crop.

    Codes come from the global crops only (``sinkhorn``, no gradient). For global crop i the
    loss is the mean, over every other crop v, of ``-sum_k q_ik log softmax(scores_v / T)_k``
    averaged over the batch; the result is the mean over the global crops, as in the official
    training loop. With a queue, crop i's queued scores are stacked below its batch scores
    before Sinkhorn (more samples for the equipartition) and only the batch's B codes are kept.
    """
    crops = [x.float() for x in [*high_res, *low_res]]
    if len(high_res) < 1 or len(crops) < 2:
        raise ValueError("swav_loss needs at least one global crop and one other crop")
    log_probs = [F.log_softmax(x / temperature, dim=1) for x in crops]  # each (B, K)
    total = 0.0
    for i, scores in enumerate(crops[: len(high_res)]):
        batch = scores.shape[0]
        # On several processes the codes come from every rank's scores (no gradient flows into
        # them), in rank order; this rank keeps the rows of its own B samples.
        scores = distributed.gather_no_grad(scores.detach())
        if queue_scores is not None and queue_scores[i] is not None:
            scores = torch.cat([scores, queue_scores[i].float()])  # (B + Q, K)
        mine = distributed.rank() * batch
        codes = sinkhorn(scores, epsilon=epsilon, iterations=iterations)[mine : mine + batch]
        # The swap: crop i's codes are predicted from every crop but i itself.
        others = [lp for v, lp in enumerate(log_probs) if v != i]
        total = total + sum(-(codes * lp).sum(dim=1).mean() for lp in others) / len(others)
    return total / len(high_res)

"""The InfoNCE loss of CPC over a grid of patches (van den Oord et al., arXiv 1807.03748, Sec. 2.3 and 3.2;
Hénaff et al., arXiv 1905.09272, appendix pseudo-code ``CPC``)."""

import torch
import torch.nn.functional as F

from cssl_core.losses.precision import full_precision


@full_precision
def cpc_loss(predictions: torch.Tensor, targets: torch.Tensor, offset: int, first: int = 0) -> torch.Tensor:
    """predictions: (N, H, W, D); targets: (M, H, W, D), M >= N; offset: k >= 1 rows.

    ``predictions[n, i, j]`` (made from the context at row i, column j of image n) predicts
    ``targets[first + n, i + k, j]``, the patch k rows below. Its logits are its inner products
    with every target of the batch, all M * H * W patches of all images (v2's negatives), and the
    loss is their cross-entropy with the true patch, the mean over the N * (H - k) * W
    predictions whose target row exists. Returns a scalar.

    On several processes ``targets`` are every rank's (gathered with gradients) and the
    predictions this rank's images, from image ``first`` on: the mean over ranks of the returned
    means is the one-process loss.
    """
    _, h, w, d = targets.shape
    if not 1 <= offset < h:
        raise ValueError(f"offset must be in [1, {h - 1}] for a grid of {h} rows, got {offset}")
    queries = predictions[:, : h - offset].float().reshape(-1, d)  # (N * (H - k) * W, D)
    logits = queries @ targets.float().reshape(-1, d).T  # (N * (H - k) * W, M * H * W)
    # Query q = (image, row, column) sits at image * (H - k) * W + within; its target
    # (first + image, row + k, column) at (first + image) * H * W + k * W + within in the full grid.
    q = torch.arange(queries.shape[0], device=logits.device)
    image, within = q // ((h - offset) * w), q % ((h - offset) * w)
    labels = (first + image) * h * w + offset * w + within
    return F.cross_entropy(logits, labels)

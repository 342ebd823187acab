"""Frozen features of a backbone over a uint8 image split."""

from __future__ import annotations

import torch
from torch import nn

from cssl_core.data import StreamedImages
from cssl_core.device import autocast_for


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    images: torch.Tensor,
    mean: list[float],
    std: list[float],
    device: torch.device,
    batch_size: int = 512,
    precision: str = "bf16",
    batch_statistics: bool = False,
) -> torch.Tensor:
    """images: uint8 (N, 3, H, W), or :class:`StreamedImages` decoded batch by batch -> float32
    features (N, D) on the CPU, backbone in eval mode (``batch_statistics``: in train mode, each
    batch of ``batch_size`` normalised by its own BatchNorm statistics, the running ones updated
    as in training)."""
    was_training = backbone.training
    backbone.train(batch_statistics)
    mean_t = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=device).view(1, 3, 1, 1)
    out = []
    batches = (
        images.batches(batch_size)
        if isinstance(images, StreamedImages)
        else (images[start : start + batch_size] for start in range(0, len(images), batch_size))
    )
    for batch in batches:
        x = batch.to(device, non_blocking=True).float().div_(255)
        x = ((x - mean_t) / std_t).contiguous(memory_format=torch.channels_last)
        with autocast_for(device, precision):
            out.append(backbone(x).float().cpu())
    backbone.train(was_training)
    return torch.cat(out)

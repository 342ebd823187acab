"""Self-attention maps of a ViT checkpoint: the [CLS] token's attention to each patch in the last
block, per head, as DINO shows them (arXiv 2104.14294, Fig. 1 and 3; official
``visualize_attention.py``). Any ViT checkpoint works, whatever its method.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import torch

from cssl_core.device import resolve_device
from cssl_core.errors import ConfigError


@torch.no_grad()
def attention_maps(checkpoint: str | os.PathLike | Mapping[str, Any], images: torch.Tensor, *,
                   device: str = "auto", batch_size: int = 256) -> torch.Tensor:
    """images: uint8 (N, 3, H, W) -> float32 (N, heads, H // p, W // p) on the CPU, p the patch side.

    ``checkpoint`` is a checkpoint's path or its loaded state. The images are normalised with
    the checkpoint's stored mean and std, as for its evaluations, and go through its
    evaluation encoder (a DINO checkpoint's teacher) in fp32. Each map is the softmax row of
    the [CLS] query over the patches, so it sums to 1 less the [CLS] token's attention to itself.
    """
    from cssl_core.backbones import vit_names
    from cssl_core.train.checkpoint import build_encoder_from_checkpoint, load_checkpoint

    state = checkpoint if isinstance(checkpoint, Mapping) else load_checkpoint(checkpoint)
    backbone = state["config"]["backbone"]
    if backbone not in vit_names():
        raise ConfigError(f"attention maps need a ViT backbone ({', '.join(vit_names())}); this checkpoint's "
                          f"backbone is {backbone!r}, which has no attention")
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be uint8 (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
    dev = resolve_device(device)
    encoder = build_encoder_from_checkpoint(state).to(dev).eval()
    norm = state["normalization"]
    mean = torch.tensor(norm["mean"], device=dev).view(1, 3, 1, 1)
    std = torch.tensor(norm["std"], device=dev).view(1, 3, 1, 1)
    out = []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(dev).float().div_(255)
        out.append(encoder.last_attention((x - mean) / std).float().cpu())
    if not out:
        h, w = (side // encoder.patch_size for side in images.shape[-2:])
        return torch.empty(0, encoder.num_heads, h, w)
    return torch.cat(out)

"""Self-attention maps of a ViT checkpoint: the [CLS] token's attention to each patch in the last
block, per head, as DINO shows them (arXiv 2104.14294, Fig. 1 and 3; official
``visualize_attention.py``). Any ViT checkpoint works, whatever its method. The
``attention`` evaluation protocol shows them on a few test images.
"""

from __future__ import annotations

import base64
import io
import os
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from cssl_core.config import check_bounds, option
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


@dataclass
class AttentionParams:
    num_images: int = option(6, "test images shown: a seeded, class-balanced subset of the test split", ge=1, le=32)
    seed: int = option(0, "seed of the subset", ge=0, le=2**32 - 1)

    def validate(self) -> None:
        check_bounds(self)


def attention_extra(state: Mapping[str, Any], test, classes: list, p: AttentionParams,
                    device: str | torch.device = "auto") -> dict[str, Any]:
    """The ``attention`` protocol's result: ``num_images`` test images (a seeded, class-balanced
    subset of ``test``, an ImageSplit) as PNG data URLs, each with its per-head maps
    (heads x H/p x W/p, rounded to 4 decimals), and their labels."""
    from cssl_core.data import class_balanced_indices

    chosen = class_balanced_indices(test.labels, min(p.num_images, len(test.labels)), p.seed)
    images = test.images[chosen]
    maps = attention_maps(state, images, device=str(device))
    return {"images": [png_data_url(image) for image in images],
            "maps": [[[[round(v, 4) for v in row] for row in head] for head in image] for image in maps.tolist()],
            "heads": maps.shape[1], "patch": images.shape[-1] // maps.shape[-1],
            "classes": list(classes), "labels": test.labels[chosen].tolist()}


def png_data_url(image: torch.Tensor) -> str:
    """uint8 (3, H, W) -> "data:image/png;base64,..."."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).contiguous().numpy()).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")

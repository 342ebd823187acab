"""Self-attention maps of a ViT checkpoint: the [CLS] token's attention to each patch in the last
block, per head, as DINO shows them (arXiv 2104.14294, Fig. 1 and 3; official
``visualize_attention.py``). Any ViT checkpoint works, whatever its method. The
``attention`` evaluation protocol shows them on a few test images.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from cssl_core.backbones import VisionTransformer
from cssl_core.config import check_bounds, option
from cssl_core.data import class_balanced_indices
from cssl_core.device import resolve_device
from cssl_core.evaluation.protocol import CheckpointInput, Protocol, register_protocol, require_backbone
from cssl_core.evaluation.result import ProtocolOutput
from cssl_core.train.checkpoint import build_encoder_from_checkpoint, load_checkpoint


@torch.no_grad()
def attention_maps(
    checkpoint: str | os.PathLike | Mapping[str, Any],
    images: torch.Tensor,
    *,
    device: str = "auto",
    batch_size: int = 256,
) -> torch.Tensor:
    """images: uint8 (N, 3, H, W) -> float32 (N, heads, H // p, W // p) on the CPU, p the patch side.

    ``checkpoint`` is a checkpoint's path or its loaded state. The images are normalised with
    the checkpoint's stored mean and std, as for its evaluations, and go through its
    evaluation encoder (a DINO checkpoint's teacher) in fp32. Each map is the softmax row of
    the [CLS] query over the patches, so it sums to 1 less the [CLS] token's attention to itself.
    """
    state = checkpoint if isinstance(checkpoint, Mapping) else load_checkpoint(checkpoint)
    require_backbone(state["config"]["backbone"], "vit", "attention_maps")
    dev = resolve_device(device)
    encoder = build_encoder_from_checkpoint(state).to(dev)
    norm = state["normalization"]
    return encoder_attention_maps(encoder, images, norm["mean"], norm["std"], dev, batch_size)


@torch.no_grad()
def encoder_attention_maps(
    encoder: VisionTransformer,
    images: torch.Tensor,
    mean: list[float],
    std: list[float],
    device: torch.device,
    batch_size: int = 256,
) -> torch.Tensor:
    """:func:`attention_maps` of a built ViT ``encoder`` (on ``device``), the images normalised
    with ``mean`` and ``std`` (3 values each)."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be uint8 (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
    encoder.eval()
    mean_t = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=device).view(1, 3, 1, 1)
    out = []
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].to(device).float().div_(255)
        out.append(encoder.last_attention((x - mean_t) / std_t).float().cpu())
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


@register_protocol
class AttentionProtocol(Protocol):
    name = "attention"
    summary = "a ViT's last-block [CLS] attention maps per head on a few test images (DINO), no accuracy"
    params_cls = AttentionParams
    needs = "checkpoint"
    backbone = "vit"
    accuracy = False
    extra = {
        "images": "the chosen test images as PNG data URLs",
        "maps": "per image, per head, the [CLS] token's attention to each patch (H/p x W/p, 4 decimals)",
        "heads": "attention heads per image",
        "patch": "the patch side p in pixels",
        "classes": "the class names the labels index",
        "labels": "each image's label",
    }

    def run_checkpoint(self, checkpoint: CheckpointInput, data, params: AttentionParams) -> ProtocolOutput:
        test = data.test
        chosen = class_balanced_indices(test.labels, min(params.num_images, len(test.labels)), params.seed)
        images = test.images[chosen]
        maps = encoder_attention_maps(checkpoint.encoder(), images, checkpoint.mean, checkpoint.std, checkpoint.device)
        labels = test.labels[chosen].tolist()
        extra = {
            "images": [png_data_url(image) for image in images],
            "maps": [[[[round(v, 4) for v in row] for row in head] for head in image] for image in maps.tolist()],
            "heads": maps.shape[1],
            "patch": images.shape[-1] // maps.shape[-1],
            "classes": list(data.classes),
            "labels": labels,
        }
        return ProtocolOutput(top1=None, top5=None, num_train=0, num_test=len(labels), extra=extra)


def png_data_url(image: torch.Tensor) -> str:
    """uint8 (3, H, W) -> "data:image/png;base64,..."."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).contiguous().numpy()).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")

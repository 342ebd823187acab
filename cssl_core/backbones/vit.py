"""A compact Vision Transformer (Dosovitskiy et al., arXiv 2010.11929) in DeiT's sizes
(Touvron et al., arXiv 2012.12877, Table 1), the ones DINO and MoCo v3 pretrain:
ViT-Ti (192 wide, 12 blocks, 3 heads) and ViT-S (384 wide, 12 blocks, 6 heads).

Two methods' variants are options: DINO's stochastic depth (``drop_path_rate``, its student
only), and MoCo v3's fixed 2-D sin-cos position embedding (``position_embedding="sincos"``) with
12 heads (``num_heads``) and a frozen patch projection (:meth:`VisionTransformer.freeze_patch_embed`).

Shapes: images (N, 3, H, W) -> a grid of h x w patches, h = H // p, w = W // p -> tokens
(N, 1 + h*w, D), the CLS token first -> the backbone's output, the final CLS token (N, D).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def vit_patch_size(image_size: int) -> int:
    """Patch side for square images of ``image_size`` px.

    16 from 224 px up, the /16 models of ViT and DeiT (a 14x14 grid at 224 px). Below that
    a fixed 16 would leave a 32 px CIFAR image 2x2 tokens, so the patch shrinks with the image to
    keep an 8x8 grid, near the 14x14 scale: ``max(1, image_size // 8)``, so 32 px -> 4,
    64 -> 8, 96 -> 12. Where the patch does not divide the image, the strided patch projection
    drops the remainder at the bottom and right edges.
    """
    return 16 if image_size >= 224 else max(1, image_size // 8)


POSITION_EMBEDDINGS = ("learned", "sincos")


def sincos_position_embedding(h: int, w: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """MoCo v3's fixed position embedding (arXiv 2104.02057, Sec. 4.2 footnote; official
    ``vits.py``, ``build_2d_sincos_position_embedding``) for an h x w grid: (1, 1 + h*w, dim),
    zeros at the CLS token, then per patch [sin, cos] of one grid coordinate times ``dim / 4``
    frequencies and [sin, cos] of the other."""
    if dim % 4:
        raise ValueError(f"a 2-D sin-cos position embedding needs a width divisible by 4, got {dim}")
    # The official meshgrid(grid_w, grid_h) in "ij" order: its first coordinate is the patch's row.
    first, second = torch.meshgrid(
        torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
    )
    omega = 1.0 / temperature ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4))  # (dim / 4,)
    out_first = first.flatten()[:, None] * omega[None]  # (h*w, dim / 4)
    out_second = second.flatten()[:, None] * omega[None]
    grid = torch.cat([out_first.sin(), out_first.cos(), out_second.sin(), out_second.cos()], dim=1)
    return torch.cat([torch.zeros(1, dim), grid])[None]


class DropPath(nn.Module):
    """Stochastic depth (Huang et al., arXiv 1603.09382) on a residual branch: in training, each
    sample's branch output is zeroed with probability ``p`` and the others scaled by 1 / (1 - p);
    the official DINO ``drop_path``. Identity in eval mode or at p = 0."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = (keep + torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device)).floor_()
        return x.div(keep) * mask

    def extra_repr(self) -> str:
        return f"p={self.p}"


def disable_drop_path(module: nn.Module) -> None:
    """Turn off every :class:`DropPath` in ``module`` (DINO's teacher, a copy of the student, has none)."""
    for m in module.modules():
        if isinstance(m, DropPath):
            m.p = 0.0


class Attention(nn.Module):
    """Multi-head self-attention: (N, T, D) -> (N, T, D)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n, t, d = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.num_heads, d // self.num_heads)
        return qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (N, heads, T, D / heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._qkv(x)
        out = F.scaled_dot_product_attention(q, k, v)  # (N, heads, T, D / heads)
        return self.proj(out.transpose(1, 2).flatten(2))

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """The attention probabilities, written out since SDPA does not return them: (N, heads, T, T)."""
        q, k, _ = self._qkv(x)
        return (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(dim=-1)


class Block(nn.Module):
    """Pre-norm transformer block: x + MSA(LN(x)), then x + MLP(LN(x)), MLP ratio 4 with GELU;
    each branch through :class:`DropPath` (identity at ``drop_path`` 0)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int = 4, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """ViT with a CLS token and position embeddings for the grid of ``image_size``.

    ``position_embedding``: "learned" (a parameter, DINO's) or "sincos" (MoCo v3's fixed 2-D
    sin-cos embedding, :func:`sincos_position_embedding`, a buffer that gets no update).
    ``drop_path_rate``: stochastic depth rising linearly over the blocks from 0 to this rate,
    as DINO's ``VisionTransformer`` (``dpr = linspace(0, drop_path_rate, depth)``).

    Other input sizes (multi-crop's local views) work: learned position embeddings are
    resampled bicubically to the input's grid, the CLS position kept, as DINO's
    ``interpolate_pos_encoding`` (arXiv 2104.14294); sin-cos ones are computed for that grid.
    """

    def __init__(
        self,
        image_size: int,
        patch_size: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        position_embedding: str = "learned",
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        if position_embedding not in POSITION_EMBEDDINGS:
            raise ValueError(f"position_embedding must be one of {', '.join(POSITION_EMBEDDINGS)}")
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.position_embedding = position_embedding
        self.grid = image_size // patch_size  # the side of the grid the position embeddings are made for
        self.patch_embed = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        if position_embedding == "sincos":
            self.register_buffer("pos_embed", sincos_position_embedding(self.grid, self.grid, embed_dim))
        else:
            self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid**2, embed_dim))
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, drop_path=rate) for rate in rates)
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self._init_weights()

    def _init_weights(self) -> None:
        # DINO's and MoCo v3's: truncated normal (std 0.02) for the tokens and linear layers.
        if self.position_embedding == "learned":
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        # MoCo v3's Xavier-uniform patch projection, treated as a (3 p^2 -> D) linear map; this is
        # the random projection that freeze_patch_embed keeps.
        bound = math.sqrt(6.0 / (3 * self.patch_size**2 + self.embed_dim))
        nn.init.uniform_(self.patch_embed.weight, -bound, bound)
        nn.init.zeros_(self.patch_embed.bias)

    def freeze_patch_embed(self) -> None:
        """Keep the patch projection at its random init: MoCo v3's remedy for instability
        (Chen, Xie & He, arXiv 2104.02057, Sec. 4.2 and 5)."""
        self.patch_embed.weight.requires_grad_(False)
        self.patch_embed.bias.requires_grad_(False)

    def interpolate_pos_embed(self, h: int, w: int) -> torch.Tensor:
        """Position embeddings for an h x w patch grid: (1, 1 + h*w, D)."""
        if (h, w) == (self.grid, self.grid):
            return self.pos_embed
        if self.position_embedding == "sincos":
            return sincos_position_embedding(h, w, self.embed_dim).to(self.pos_embed)
        cls_pos, grid_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        grid_pos = grid_pos.reshape(1, self.grid, self.grid, self.embed_dim).permute(0, 3, 1, 2)  # (1, D, g, g)
        grid_pos = F.interpolate(grid_pos, size=(h, w), mode="bicubic", align_corners=False)
        return torch.cat([cls_pos, grid_pos.flatten(2).transpose(1, 2)], dim=1)

    def _embed(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        patches = self.patch_embed(images)  # (N, D, h, w)
        h, w = patches.shape[-2:]
        tokens = torch.cat([self.cls_token.expand(len(images), -1, -1), patches.flatten(2).transpose(1, 2)], dim=1)
        return tokens + self.interpolate_pos_embed(h, w), (h, w)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> the final CLS token (N, D)."""
        x, _ = self._embed(images)
        for block in self.blocks:
            x = block(x)
        return self.norm(x[:, 0])  # LayerNorm is per token, so normalising the CLS token alone is the same

    def last_attention(self, images: torch.Tensor) -> torch.Tensor:
        """The last block's attention from the CLS token to each patch, per head: (N, heads, h, w).

        The maps DINO shows (arXiv 2104.14294, Sec. 4, Fig. 1). Each row of attention is a softmax
        over all 1 + h*w tokens, so a map sums to 1 minus the CLS token's attention to itself.
        Call it under ``torch.no_grad()`` when only looking.
        """
        x, (h, w) = self._embed(images)
        for block in self.blocks[:-1]:
            x = block(x)
        last = self.blocks[-1]
        attention = last.attn.weights(last.norm1(x))  # (N, heads, 1 + h*w, 1 + h*w)
        return attention[:, :, 0, 1:].reshape(len(images), self.num_heads, h, w)


# (embed_dim, depth, num_heads): DeiT's ViT-Ti and ViT-S. MoCo v3's official vit_small has 12 heads.
VIT_SIZES = {"vit_tiny": (192, 12, 3), "vit_small": (384, 12, 6)}


def _vit(name: str, image_size: int, num_heads: int | None, **kwargs) -> VisionTransformer:
    embed_dim, depth, heads = VIT_SIZES[name]
    return VisionTransformer(image_size, vit_patch_size(image_size), embed_dim, depth, num_heads or heads, **kwargs)


def vit_tiny(image_size: int, num_heads: int | None = None, **kwargs) -> VisionTransformer:
    """ViT-Ti; ``kwargs``: :class:`VisionTransformer`'s ``position_embedding`` and ``drop_path_rate``."""
    return _vit("vit_tiny", image_size, num_heads, **kwargs)


def vit_small(image_size: int, num_heads: int | None = None, **kwargs) -> VisionTransformer:
    """ViT-S; ``kwargs``: :class:`VisionTransformer`'s ``position_embedding`` and ``drop_path_rate``."""
    return _vit("vit_small", image_size, num_heads, **kwargs)

"""Normalisation without batch statistics: GroupNorm plus weight-standardised convolutions,
the replacement for BatchNorm with which BYOL still learns (Richemond et al., "BYOL works even
without batch statistics", arXiv 2010.10241).

Under it each sample's output depends on that sample alone, in training as in evaluation.
Layer norm (``convert_to_layer_norm``, CPC v2's choice) has the same property.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from cssl_core.backbones.vit import VisionTransformer

# Richemond et al. replace every BatchNorm by GroupNorm and every convolution by a weight-
# standardised one. We could not check the group count they use against the paper's text;
# 16 is our choice, between GroupNorm's own default of 32 (Wu & He, arXiv 1803.08494) and
# the 8-channel groups that default gives the 64-channel first stage of a ResNet.
GN_GROUPS = 16

NORMS = ("bn", "gn_ws")  # the config's norm: BatchNorm, or GroupNorm with weight-standardised convolutions
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


class WSConv2d(nn.Conv2d):
    """Conv2d whose weight is standardised in the forward, per output channel over
    (in, kh, kw): W_hat = (W - mean) / sqrt(var + eps) (Qiao et al., arXiv 1903.10520, Sec. 3).

    The stored ``weight`` and ``bias`` keep their names and values, so a ``state_dict`` has the
    keys of the plain convolution.
    """

    eps = 1e-5

    def standardized_weight(self) -> torch.Tensor:
        """(out, in / groups, kh, kw), zero mean and unit variance per output channel."""
        w = self.weight
        mean = w.mean(dim=(1, 2, 3), keepdim=True)
        var = w.var(dim=(1, 2, 3), unbiased=False, keepdim=True)
        return (w - mean) / torch.sqrt(var + self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.standardized_weight(), self.bias)


def group_count(channels: int, groups: int = GN_GROUPS) -> int:
    """``groups``, or the largest divisor of ``channels`` below it when it does not divide."""
    return next(g for g in range(min(groups, channels), 0, -1) if channels % g == 0)


def _group_norm(bn: nn.Module) -> nn.GroupNorm:
    gn = nn.GroupNorm(group_count(bn.num_features), bn.num_features, eps=bn.eps, affine=bn.affine, device="meta")
    if bn.affine:
        gn.weight, gn.bias = bn.weight, bn.bias  # the same Parameters: values, requires_grad, optimiser state
    return gn


def _ws_conv(conv: nn.Conv2d) -> WSConv2d:
    ws = WSConv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        device="meta",  # no throwaway init: the conv's own Parameters are moved in below
    )
    ws.weight, ws.bias = conv.weight, conv.bias  # the same Parameters, as for GroupNorm
    return ws


def _replacement(m: nn.Module) -> nn.Module:
    if isinstance(m, _BATCH_NORMS):
        return _group_norm(m)
    if isinstance(m, nn.Conv2d) and not isinstance(m, WSConv2d):
        return _ws_conv(m)
    return m


def convert_to_gn_ws(module: nn.Module) -> nn.Module:
    """Replace, in place, every BatchNorm by a GroupNorm over the same channels and every Conv2d
    by a ``WSConv2d``; return ``module`` (or its replacement, when it is itself one of those).

    GroupNorm takes BatchNorm's affine Parameters (none when BatchNorm had none) and drops its
    running statistics. On (N, C) features, as in MLP heads, a group needs several channels to
    mean anything: a layer narrower than about 4 x 16 channels normalises groups of 1-3 values.

    Each child is swapped in the module that holds it, so a submodule reachable along two
    paths (``self.backbone`` and ``nn.Sequential(self.backbone, ...)``) shows the change along
    both; a layer held by two parents gets one replacement, shared by both.

    ViTs are left whole: they have no BatchNorm, and their one convolution is the patch
    projection, a linear map on patches (standardising it would send every flat patch to the
    same token whatever its colour).
    """
    if isinstance(module, VisionTransformer):
        return module
    vit_parts = {m for vit in module.modules() if isinstance(vit, VisionTransformer) for m in vit.modules()}
    return _swap_layers(module, _replacement, skip=vit_parts)


def _layer_norm(bn: nn.Module) -> nn.Module:
    if not isinstance(bn, _BATCH_NORMS):
        return bn
    ln = nn.GroupNorm(1, bn.num_features, eps=bn.eps, affine=bn.affine, device="meta")
    if bn.affine:
        ln.weight, ln.bias = bn.weight, bn.bias  # the same Parameters, as for GroupNorm above
    return ln


def convert_to_layer_norm(module: nn.Module) -> nn.Module:
    """Replace, in place, every BatchNorm by layer normalisation over the same channels; return
    ``module`` (or its replacement, when it is itself a BatchNorm).

    Layer norm here is ``GroupNorm(1, C)``: each sample normalised over all of (C, H, W), then
    a per-channel scale and shift (BatchNorm's affine Parameters), as CPC v2 (arXiv 1905.09272,
    Sec. 4.1) uses in place of BatchNorm so that no patch's features depend on other patches.
    Convolutions stay as they are; a layer held by two parents gets one replacement.
    """
    return _swap_layers(module, _layer_norm, skip=set())


def _swap_layers(module: nn.Module, replacement: Callable[[nn.Module], nn.Module], skip: set[nn.Module]) -> nn.Module:
    """Swap each child for ``replacement(child)`` in the module that holds it (parents in
    ``skip`` are left alone); return ``replacement(module)``."""
    replaced: dict[nn.Module, nn.Module] = {}
    for parent in list(module.modules()):
        if parent in skip:
            continue
        # _modules rather than named_children(), which skips a child held twice by one parent.
        for name, child in list(parent._modules.items()):
            if child is None:
                continue
            if child not in replaced:
                replaced[child] = replacement(child)
            if replaced[child] is not child:
                setattr(parent, name, replaced[child])
    return replacement(module)


def has_batch_norm(module: nn.Module) -> bool:
    """Whether any layer in the module tree normalises with batch statistics."""
    return any(isinstance(m, _BATCH_NORMS) for m in module.modules())

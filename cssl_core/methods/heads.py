"""Projection and prediction heads: MLPs of Linear-BN-ReLU blocks."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


def mlp(
    in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2, last_bn: bool = False, last_bn_affine: bool = True
) -> nn.Sequential:
    """(N, in_dim) -> (N, out_dim): ``num_layers`` linear layers, BN + ReLU between them.

    ``num_layers=1`` is a single linear map (MoCo v1's head). ``last_bn`` adds a BatchNorm
    after the output layer (SimSiam's projector, Barlow Twins' projector is without it).
    """
    if num_layers < 1:
        raise ValueError("num_layers must be at least 1")
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(num_layers - 1):
        layers += [nn.Linear(dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim, bias=not last_bn))
    if last_bn:
        layers.append(nn.BatchNorm1d(out_dim, affine=last_bn_affine))
    return nn.Sequential(*layers)


class L2Normalize(nn.Module):
    """(N, D) -> unit rows, float32: the last layer of a module whose output lives on the sphere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x.float(), dim=1)


def momentum_copy(module: nn.Module) -> nn.Module:
    """A frozen copy of ``module`` for a momentum (EMA) encoder."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad = False
    return target


@torch.no_grad()
def ema_update(online: nn.Module, target: nn.Module, momentum: float) -> None:
    """``target = m * target + (1 - m) * online`` for parameters; buffers (BN statistics) are copied."""
    online_params = [p.detach() for p in online.parameters()]
    target_params = list(target.parameters())
    torch._foreach_lerp_(target_params, online_params, 1.0 - momentum)
    for b_online, b_target in zip(online.buffers(), target.buffers()):
        b_target.copy_(b_online)


@torch.no_grad()
def enqueue(queue: torch.Tensor, ptr: torch.Tensor, keys: torch.Tensor) -> None:
    """Write ``keys`` (N, D) into the ring buffer ``queue`` (K, D) at ``ptr`` (a 0-d long
    buffer) and advance it: the oldest keys are overwritten first, wrapping when K is not a
    multiple of N. With N > K only the newest K keys are kept (a write with repeated indices
    would keep an arbitrary one)."""
    n, size = keys.shape[0], queue.shape[0]
    first = max(0, n - size)
    idx = (ptr + torch.arange(first, n, device=keys.device)) % size
    queue[idx] = keys[first:].to(queue.dtype)
    ptr.copy_((ptr + n) % size)

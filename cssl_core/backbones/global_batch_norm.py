"""BatchNorm over the global batch of a run on several processes, on a CPU (gloo) as on CUDA.

``torch.nn.SyncBatchNorm`` does the same but refuses CPU tensors (torch 2.x: "SyncBatchNorm
expected input tensor to be on GPU"), and the methods' papers normalise over the whole batch
(SimCLR's global BN, arXiv 2002.05709 Sec. 3; BYOL and SimSiam sync BN across devices), so a run
on N processes is to see the statistics one process sees. Two autograd-aware all-reduces per
layer: the mean, then the biased variance about it (two passes, as exact as the one-process
kernel), so the backward routes every rank's share of the gradient through the statistics.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from cssl_core import distributed
from cssl_core.backbones.norm import _BATCH_NORMS, _swap_layers


class GlobalBatchNorm(_BatchNorm):
    """BatchNorm (N, C, ...) whose training statistics span every rank's batch; with one process,
    or in evaluation, it is BatchNorm. Its ``state_dict`` has BatchNorm's keys."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (N, C, ...), got {input.dim()}D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or distributed.world_size() == 1:
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.float()
        count = distributed.world_size() * xf.numel() // xf.shape[1]  # equal shards on every rank
        mean = distributed.global_sum(xf.sum(dims)) / count  # (C,)
        centred = xf - mean.view(shape)
        var = distributed.global_sum(centred.pow(2).sum(dims)) / count  # biased, as BatchNorm normalises
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach() * count / max(count - 1, 1))
        return out.to(x.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, unbiased_var: torch.Tensor) -> None:
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
        self.running_var.lerp_(unbiased_var.to(self.running_var.dtype), factor)


def _global(bn: nn.Module) -> nn.Module:
    if not isinstance(bn, _BATCH_NORMS) or isinstance(bn, GlobalBatchNorm):
        return bn
    new = GlobalBatchNorm(
        bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=bn.affine, track_running_stats=bn.track_running_stats
    )
    if bn.affine:
        new.weight, new.bias = bn.weight, bn.bias  # the same Parameters: values, requires_grad, optimiser state
    if bn.track_running_stats:
        new.running_mean, new.running_var, new.num_batches_tracked = (
            bn.running_mean,
            bn.running_var,
            bn.num_batches_tracked,
        )
    new.train(bn.training)
    return new


def convert_to_global_batch_norm(module: nn.Module) -> nn.Module:
    """Replace, in place, every BatchNorm by a :class:`GlobalBatchNorm` holding the same
    Parameters and buffers; return ``module`` (or its replacement, when it is itself one)."""
    return _swap_layers(module, _global, skip=set())

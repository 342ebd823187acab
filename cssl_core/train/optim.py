"""Optimisers: SGD, AdamW, and LARS (You et al., arXiv 1708.03888) written out here,
since torch ships no LARS."""

from __future__ import annotations

import torch

from cssl_core.config import PretrainConfig


class LARS(torch.optim.Optimizer):
    """SGD with momentum and a layer-wise trust ratio ``eta * ||w|| / (||g|| + wd ||w||)``.

    Weight decay is added to the gradient before the trust ratio, as in SimCLR's and BYOL's
    implementations. Groups with ``lars_exclude=True`` (biases, norms) use plain SGD.

    No clipping: a layer moves by ``lr * eta`` of its norm per step (before momentum), as in
    SimCLR, BYOL and SwAV's official code (apex LARC with ``clip=False``). solo-learn's
    ``clip_lr=True`` instead takes ``min(eta * ||w|| / (||g|| + wd ||w||) / lr, 1)`` as the
    ratio, so a layer's step there is at most ``eta`` of its norm whatever the learning rate:
    an ``eta`` from a solo-learn config is a ceiling, not a value that means the same here.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.001):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars_exclude=False))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d_p = p.grad
                if group["weight_decay"]:
                    d_p = d_p.add(p, alpha=group["weight_decay"])
                if not group["lars_exclude"]:
                    w_norm = torch.linalg.vector_norm(p)
                    g_norm = torch.linalg.vector_norm(d_p)
                    trust = torch.where(
                        (w_norm > 0) & (g_norm > 0), group["eta"] * w_norm / g_norm, torch.ones_like(w_norm)
                    )
                    d_p = d_p.mul(trust)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = d_p.clone()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(d_p)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])


def build_optimizer(groups: list[dict], config: PretrainConfig) -> torch.optim.Optimizer:
    """One optimiser over the method's parameter groups; learning rates and weight decay are set
    per step by the loop (a group's ``wd_scale`` of 0 exempts it from weight decay)."""
    mc = config.method_config
    for g in groups:
        g.setdefault("wd_scale", 1.0)
        g["weight_decay"] = mc.weight_decay * g["wd_scale"]
        g.setdefault("lr_scale", 1.0)
        g.setdefault("fixed_lr", False)
    if mc.optimizer == "lars":
        for g in groups:
            g.setdefault("lars_exclude", False)
        return LARS(groups, lr=config.lr, momentum=mc.sgd_momentum, weight_decay=mc.weight_decay, eta=mc.lars_eta)
    for g in groups:
        g.pop("lars_exclude", None)
    if mc.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=mc.sgd_momentum, weight_decay=mc.weight_decay)
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=mc.weight_decay)

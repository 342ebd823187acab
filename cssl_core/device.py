"""Where a run executes, and in which precision."""

from __future__ import annotations

import contextlib
import functools

import torch

from cssl_core.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda was requested but no CUDA GPU is available; use device=auto or cpu")
    return device


@functools.cache  # called every training step; the answer is the hardware's
def bf16_supported(device: torch.device) -> bool:
    """bf16 is fast on GPUs from Ampere on and on CPUs with AVX512-BF16 or AMX; elsewhere it is emulated."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def autocast_for(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast where the hardware runs it natively; fp32 otherwise (an emulated bf16 is slower)."""
    if precision != "bf16" or not bf16_supported(device):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)

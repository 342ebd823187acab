"""Losses run in float32 even inside a bf16 autocast region: similarities of nearby unit
vectors and softmaxes over thousands of logits need more than bf16's 8 mantissa bits."""

import functools

import torch


def full_precision(loss_fn):
    @functools.wraps(loss_fn)
    def wrapper(*args, **kwargs):
        with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
            return loss_fn(*args, **kwargs)

    return wrapper

"""Pretraining: the loop, its optimisers and schedules, and checkpoints.

The names below are imported on first use, so that a module needing only checkpoints or
schedules (the evaluation protocols do) does not import the training loop, which imports them.
"""

from importlib import import_module

_EXPORTS = {
    "CheckpointInfo": "cssl_core.train.checkpoint",
    "export_backbone": "cssl_core.train.checkpoint",
    "load_checkpoint": "cssl_core.train.checkpoint",
    "PretrainResult": "cssl_core.train.loop",
    "Progress": "cssl_core.train.loop",
    "pretrain": "cssl_core.train.loop",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)

"""Pretraining: the loop, its optimisers and schedules, and checkpoints."""

from cssl_core.train.checkpoint import CheckpointInfo, export_backbone, load_checkpoint
from cssl_core.train.loop import PretrainResult, Progress, pretrain

__all__ = ["CheckpointInfo", "PretrainResult", "Progress", "export_backbone", "load_checkpoint", "pretrain"]

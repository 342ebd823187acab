"""Checkpoints: everything needed to resume a run exactly, and to evaluate or export its backbone."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cssl_core.errors import CheckpointError

FORMAT = "cssl-checkpoint/1"


@dataclass
class CheckpointInfo:
    """A checkpoint written by :func:`cssl_core.train.pretrain`."""

    path: Path
    epoch: int  # completed epochs
    step: int
    final: bool


def save_checkpoint(state: dict[str, Any], path: Path) -> Path:
    """Write atomically: a crash mid-write leaves the previous file intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save({"format": FORMAT, **state}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many kinds on a truncated or foreign file
        raise CheckpointError(f"could not read checkpoint {path}: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a cssl checkpoint (expected format {FORMAT})")
    return state


def build_encoder_from_checkpoint(state: dict[str, Any], random_init: bool = False,
                                 for_finetune: bool = False) -> nn.Module:
    """The checkpoint's evaluation encoder (the method's ``encoder_for_eval()``, or with
    ``for_finetune`` its ``encoder_for_finetune()``), images -> features.

    ``random_init=True`` gives the same architecture at the run's initialisation (same seed)
    instead of the trained weights: the baseline a pretrained encoder should beat.
    """
    from cssl_core.config import build_config
    from cssl_core.methods import build_method

    config = build_config(state["config"]["method"], state["config"])
    if random_init:
        torch.manual_seed(config.seed)
    norm = state.get("normalization")  # the images' normalisation, for a method that undoes it
    model = build_method(config, state["image_size"], state.get("num_samples", 0),
                         (norm["mean"], norm["std"]) if norm else None)
    if not random_init:
        model.load_state_dict(state["model"])
    return model.encoder_for_finetune() if for_finetune else model.encoder_for_eval()


def export_backbone(checkpoint: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write the backbone as a plain ``state_dict``.

    For ResNets the keys are torchvision's: load it into ``torchvision.models.resnet18()``
    with ``fc`` replaced by ``nn.Identity()`` (and, for inputs of 64 px or less, the CIFAR
    stem: ``conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)``, ``maxpool = nn.Identity()``).
    """
    state = load_checkpoint(checkpoint)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(build_encoder_from_checkpoint(state).state_dict(), out)
    return out

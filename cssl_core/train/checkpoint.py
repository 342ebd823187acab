"""Checkpoints: everything needed to resume a run exactly, and to evaluate or export its backbone."""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cssl_core.config import rebuild_config
from cssl_core.errors import CheckpointError
from cssl_core.methods import build_method

FORMAT = "cssl-checkpoint/1"
# What evaluating or resuming a checkpoint reads besides its weights.
REQUIRED_KEYS = ("config", "model", "step", "steps_per_epoch", "image_size")
ZIP_MAGIC = b"PK\x03\x04"
LEGACY_MAGIC = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)[:-1]  # without pickle's STOP
# torch's restricted unpickler (weights_only=True) names the global it refused after this word.
REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


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
    """The state :func:`save_checkpoint` wrote to ``path``. Every checkpoint the core reads comes
    through here: any other file (text, a truncated copy, another program's torch file) raises
    :class:`CheckpointError` ``not a cssl checkpoint: <path>: <reason>``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        # weights_only: tensors and plain values (dict, list, tuple, str, numbers) only, so that a
        # crafted file cannot run code; the loop writes nothing else.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise CheckpointError(f"could not read checkpoint {path}: {exc.strerror or exc}") from None
    except pickle.UnpicklingError as exc:
        found = REFUSED_GLOBAL.search(str(exc))
        if not found:  # random bytes fail in the same unpickler
            raise CheckpointError(f"not a cssl checkpoint: {path}: {_unreadable_reason(path)}") from None
        raise CheckpointError(
            f"not a cssl checkpoint: {path}: it holds Python objects other than tensors and plain values "
            f"({found.group(1)}), which loading could run as code; if you trust the file "
            f"(e.g. a checkpoint from an older cssl), `cssl convert-checkpoint {path} --trust --out NEW.pt` "
            "rewrites it with plain values only"
        ) from None
    except Exception:  # the pickle and zip readers raise many kinds; the reason comes from the bytes
        raise CheckpointError(f"not a cssl checkpoint: {path}: {_unreadable_reason(path)}") from None
    if not isinstance(state, dict):
        reason = f"it holds a {type(state).__name__}, not a checkpoint's dict"
    elif "format" not in state:
        reason = "it has no format entry (a plain state_dict, or another program's checkpoint?)"
    elif state["format"] != FORMAT:
        reason = f"its format is {state['format']!r}, expected {FORMAT!r}"
    elif missing := [key for key in REQUIRED_KEYS if key not in state]:
        reason = f"it lacks {', '.join(missing)}"
    else:
        return state
    raise CheckpointError(f"not a cssl checkpoint: {path}: {reason}")


def _unreadable_reason(path: Path) -> str:
    """Why ``torch.load`` could not read ``path``, from its first bytes."""
    with path.open("rb") as f:
        head = f.read(len(LEGACY_MAGIC))
    if not head:
        return "the file is empty"
    # torch.save writes a zip archive whose directory sits at its end (before torch 1.6, a pickle
    # stream that starts with its magic number).
    if head.startswith(ZIP_MAGIC) or head == LEGACY_MAGIC:
        return "the file is truncated or corrupt (an interrupted write or copy?)"
    return "not a file written by torch.save"


def build_encoder_from_checkpoint(
    state: dict[str, Any], random_init: bool = False, for_finetune: bool = False
) -> nn.Module:
    """The checkpoint's evaluation encoder (the method's ``encoder_for_eval()``, or with
    ``for_finetune`` its ``encoder_for_finetune()``), images -> features.

    ``random_init=True`` gives the same architecture at the run's initialisation (same seed)
    instead of the trained weights: the baseline a pretrained encoder should beat.
    """
    config = rebuild_config(state["config"])
    if random_init:
        torch.manual_seed(config.seed)
    norm = state.get("normalization")  # the images' normalisation, for a method that undoes it
    model = build_method(
        config, state["image_size"], state.get("num_samples", 0), (norm["mean"], norm["std"]) if norm else None
    )
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


def convert_checkpoint(path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Rewrite a trusted checkpoint whose pickle holds other objects (numpy arrays and scalars,
    dataclasses) with tensors and plain values only, so that :func:`load_checkpoint` reads it.

    This unpickles ``path`` without restriction, which runs any code the file carries: only for
    files you wrote yourself or got from someone you trust.
    """
    path, out = Path(path), Path(out)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception:
        raise CheckpointError(f"not a cssl checkpoint: {path}: {_unreadable_reason(path)}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"not a cssl checkpoint: {path}: it is not a dict with format {FORMAT!r}")
    state.pop("format")
    save_checkpoint(_plain(state, "state"), out)
    load_checkpoint(out)  # the result reads under the same rules as every other checkpoint
    return out


def _plain(value: Any, where: str) -> Any:
    """``value`` with numpy arrays as tensors, numpy scalars as Python numbers and dataclasses as
    dicts, recursively; anything else that is not a tensor or a plain value is an error."""
    import numpy as np

    if value is None or isinstance(
        value, (bool, int, float, complex, str, bytes, torch.Tensor, torch.dtype, torch.device, torch.Size)
    ):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, np.generic):
        return value.item()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {key: _plain(item, f"{where}[{key!r}]") for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(item, f"{where}[{i}]") for i, item in enumerate(value))
    raise CheckpointError(
        f"cannot convert {where}: a {type(value).__module__}.{type(value).__qualname__} has no plain equivalent"
    )

"""Evaluation protocols: weighted kNN and a linear probe on frozen features, SimCLR v2's
semi-supervised protocols, fine-tuning on a fraction of the labels and distillation, a 2-D
embedding of the test split for a plot, and a ViT's attention maps on a few test images.

Each protocol is a class registered by name in its own module of this package (:mod:`.protocol`
holds the contract and the registry); the functions here run any of them by its declared facts.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cssl_core.data import load_eval_dataset
from cssl_core.device import resolve_device
from cssl_core.errors import ConfigError
from cssl_core.evaluation.attention import AttentionParams, AttentionProtocol
from cssl_core.evaluation.distill import DistillParams, DistillProtocol
from cssl_core.evaluation.embedding import EmbeddingParams, EmbeddingProtocol
from cssl_core.evaluation.features import extract_features
from cssl_core.evaluation.finetune import FinetuneParams, FinetuneProtocol
from cssl_core.evaluation.knn import KnnParams, KnnProtocol, knn_predict, knn_scores
from cssl_core.evaluation.linear import LinearProbeParams, LinearProtocol
from cssl_core.evaluation.protocol import (
    CheckpointInput,
    Protocol,
    get_protocol,
    protocol_names,
    protocol_params,
    register_protocol,
    require_backbone,
    require_module,
)
from cssl_core.evaluation.result import EvalResult, ProtocolOutput, topk_accuracy
from cssl_core.train.checkpoint import build_encoder_from_checkpoint, load_checkpoint

# Every module of this package is imported, so a protocol defined in a new file here is registered
# with no line anywhere else. (Those modules import from .protocol and .result, never from here.)
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


class _ParamsByName(Mapping):
    """Each registered protocol's parameters class by name, read from the registry on each use."""

    def __getitem__(self, name: str) -> type:
        if name not in protocol_names():
            raise KeyError(name)
        return get_protocol(name).params_cls

    def __iter__(self) -> Iterator[str]:
        return iter(protocol_names())

    def __len__(self) -> int:
        return len(protocol_names())


# For code that only asks whether a config key names a protocol, or wants its parameters class;
# get_protocol gives the whole declaration.
PROTOCOL_PARAMS: Mapping[str, type] = _ParamsByName()


def _result(protocol: type[Protocol], params: Any, dataset: str, output: ProtocolOutput) -> EvalResult:
    return EvalResult(
        protocol=protocol.name,
        top1=output.top1,
        top5=output.top5,
        parameters=dataclasses.asdict(params),
        dataset=dataset,
        num_train=output.num_train,
        num_test=output.num_test,
        extra=dict(output.extra),
    )


def evaluate_backbone(
    backbone: nn.Module,
    data,
    protocol: str,
    *,
    mean: list[float],
    std: list[float],
    device: torch.device,
    **params: Any,
) -> EvalResult:
    """Evaluate ``backbone`` on ``data`` (an ImageDataset) by a protocol that needs frozen
    features: the train split as its bank or probe set, the test split scored."""
    p = protocol_params(protocol, params)
    cls = get_protocol(protocol)
    if cls.needs != "features":
        raise ConfigError(f"{protocol} needs the whole checkpoint; run it with evaluate_checkpoint")
    require_module(backbone, cls.backbone, f"the {protocol} protocol")
    return _result(cls, p, data.name, cls().run_features(backbone, data, p, mean, std, device))


def evaluate_checkpoint(
    checkpoint: str | Path,
    protocol: str,
    *,
    dataset: str | None = None,
    data: str | None = None,
    device: str = "auto",
    random_init: bool = False,
    **params: Any,
) -> EvalResult:
    """Evaluate a checkpoint by ``protocol``; by default on its pretraining dataset's full train and test splits.

    ``random_init=True`` evaluates the same architecture at its random initialisation (same
    seed), the baseline a pretrained backbone should beat.
    """
    cls = get_protocol(protocol)
    p = protocol_params(protocol, params)  # bad parameters fail before the data is loaded
    state = load_checkpoint(checkpoint)
    config = state["config"]
    require_backbone(config["backbone"], cls.backbone, f"the {protocol} protocol")
    # Named here, else the run's evaluation set, else its pretraining set.
    if dataset is None and config.get("eval_dataset"):
        dataset, data = config["eval_dataset"], data or config.get("eval_data")
    name = dataset or config["dataset"]
    path = data if (data or dataset) else config["data"]
    # A streamed run's images are brought to its size the standard way (load_eval_dataset).
    images = load_eval_dataset(name, path, image_size=state["image_size"], streamed=state.get("streamed", False))
    images.require_labels(f"the {protocol} protocol")
    if images.image_size != state["image_size"]:
        raise ConfigError(
            f"dataset {name!r} has {images.image_size}px images but the checkpoint was trained on "
            f"{state['image_size']}px; evaluate on a dataset of that size"
        )
    inputs = CheckpointInput(
        state=state, random_init=random_init, device=resolve_device(device), build=build_encoder_from_checkpoint
    )
    if cls.needs == "checkpoint":  # trains on, or draws, the images: decoded in memory
        output = cls().run_checkpoint(inputs, images.in_memory(), p)
    else:
        backbone = inputs.encoder().to(memory_format=torch.channels_last)
        output = cls().run_features(backbone, images, p, inputs.mean, inputs.std, inputs.device)
    result = _result(cls, p, images.name, output)
    result.epoch = state["step"] // state["steps_per_epoch"]
    result.extra["random_init"] = random_init
    return result


__all__ = [
    "AttentionParams",
    "AttentionProtocol",
    "CheckpointInput",
    "DistillParams",
    "DistillProtocol",
    "EmbeddingParams",
    "EmbeddingProtocol",
    "EvalResult",
    "FinetuneParams",
    "FinetuneProtocol",
    "KnnParams",
    "KnnProtocol",
    "LinearProbeParams",
    "LinearProtocol",
    "PROTOCOL_PARAMS",
    "Protocol",
    "ProtocolOutput",
    "evaluate_backbone",
    "evaluate_checkpoint",
    "extract_features",
    "get_protocol",
    "knn_predict",
    "knn_scores",
    "protocol_names",
    "protocol_params",
    "register_protocol",
    "topk_accuracy",
]

"""Evaluation protocols: weighted kNN and a linear probe on frozen features, SimCLR v2's
semi-supervised protocols, fine-tuning on a fraction of the labels and distillation, a 2-D
embedding of the test split for a plot, and a ViT's attention maps on a few test images."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cssl_core.config import check_bounds, coerce_field, did_you_mean, option
from cssl_core.device import resolve_device
from cssl_core.errors import ConfigError
from cssl_core.evaluation.attention import AttentionParams, attention_extra
from cssl_core.evaluation.features import extract_features
from cssl_core.evaluation.knn import knn_predict, knn_scores
from cssl_core.evaluation.distill import DistillParams, distill
from cssl_core.evaluation.embedding import EmbeddingParams, embedding_subset, reduce_to_2d
from cssl_core.evaluation.finetune import FinetuneParams, finetune, labelled_fraction, predict
from cssl_core.evaluation.linear import LinearProbeParams, linear_probe_logits, train_linear_probe


@dataclass
class KnnParams:
    k: int = option(200, "neighbours that vote", ge=1)
    temperature: float = option(0.1, "a neighbour's vote is exp(similarity / temperature)", gt=0)

    def validate(self) -> None:
        check_bounds(self)


PROTOCOL_PARAMS: dict[str, type] = {"knn": KnnParams, "linear": LinearProbeParams, "finetune": FinetuneParams,
                                     "distill": DistillParams, "embedding": EmbeddingParams,
                                     "attention": AttentionParams}
# These train the encoder itself; knn and linear read frozen features.
END_TO_END_PROTOCOLS = ("finetune", "distill")
# These need the checkpoint, not only its backbone.
CHECKPOINT_PROTOCOLS = (*END_TO_END_PROTOCOLS, "attention")
PROTOCOLS = tuple(PROTOCOL_PARAMS)


@dataclass
class EvalResult:
    """Accuracies in percent on the dataset's test split, with the protocol's parameters; an
    embedding or attention maps have no accuracy (top1 None) and their data in ``extra``."""

    protocol: str
    top1: float | None
    top5: float | None
    parameters: dict[str, Any]
    dataset: str
    num_train: int
    num_test: int
    epoch: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _topk_accuracy(scores: torch.Tensor, labels: torch.Tensor) -> tuple[float, float | None]:
    top1 = (scores.argmax(1) == labels).float().mean().item() * 100
    if scores.shape[1] < 5:
        return top1, None
    top5 = (scores.topk(5, dim=1).indices == labels[:, None]).any(1).float().mean().item() * 100
    return top1, top5


def protocol_params(protocol: str, overrides: dict[str, Any] | None = None) -> Any:
    """A protocol's parameters from JSON or command-line values, checked: unknown names, wrong
    types and out-of-range values raise :class:`ConfigError` saying what to fix."""
    if protocol not in PROTOCOL_PARAMS:
        raise ConfigError(f"unknown protocol {protocol!r}{did_you_mean(protocol, PROTOCOLS)}; "
                          f"known protocols: {', '.join(PROTOCOLS)}")
    cls = PROTOCOL_PARAMS[protocol]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        named = ", ".join(name + did_you_mean(name, fields) for name in unknown)
        raise ConfigError(f"unknown {protocol} parameter(s) {named}; valid: {', '.join(sorted(fields))}")
    params = cls(**{name: coerce_field(fields[name], value) for name, value in overrides.items()})
    params.validate()
    return params


def evaluate_backbone(backbone: nn.Module, data, protocol: str, *, mean: list[float], std: list[float],
                      device: torch.device, **params: Any) -> EvalResult:
    """Evaluate ``backbone`` on ``data`` (an ImageDataset): train split as bank / probe set, test split scored."""
    p = protocol_params(protocol, params)
    if protocol in CHECKPOINT_PROTOCOLS:
        raise ConfigError(f"{protocol} needs a checkpoint; run it with evaluate_checkpoint")
    train, test = data.train, data.test
    if protocol == "embedding":
        return _embed(backbone, data, p, mean, std, device)
    # The probe may see a fraction of the labels, the same images fine-tuning on that fraction sees.
    labelled = labelled_fraction(train.labels, getattr(p, "label_fraction", 1.0), getattr(p, "seed", 0))
    train_images, train_labels = train.images[labelled], train.labels[labelled]
    train_features = extract_features(backbone, train_images, mean, std, device)
    test_features = extract_features(backbone, test.images, mean, std, device)
    num_classes = len(data.classes)
    if protocol == "knn":
        scores = knn_scores(train_features, train_labels, test_features, num_classes, p.k, p.temperature)
    else:
        layer, f_mean, f_std = train_linear_probe(train_features, train_labels, num_classes, p)
        scores = linear_probe_logits(layer, f_mean, f_std, test_features)
    top1, top5 = _topk_accuracy(scores, test.labels)
    return EvalResult(protocol=protocol, top1=top1, top5=top5, parameters=dataclasses.asdict(p),
                      dataset=data.name, num_train=len(train_labels), num_test=len(test.labels))


def _embed(backbone: nn.Module, data, p: EmbeddingParams, mean: list[float], std: list[float],
           device: torch.device) -> EvalResult:
    """The test split (a class-balanced subset of at most ``max_points``) in 2-D: ``extra`` holds
    ``points`` as [x, y, label] rows, rounded to 4 decimals, and the ``classes`` the labels index."""
    chosen = embedding_subset(data.test.labels, p)
    features = extract_features(backbone, data.test.images[chosen], mean, std, device)
    xy = reduce_to_2d(features, p)
    labels = data.test.labels[chosen].tolist()
    points = [[round(x, 4), round(y, 4), label] for (x, y), label in zip(xy.tolist(), labels)]
    return EvalResult(protocol="embedding", top1=None, top5=None, parameters=dataclasses.asdict(p), dataset=data.name,
                      num_train=0, num_test=len(points),
                      extra={"reduction": p.method, "points": points, "classes": list(data.classes)})


def evaluate_checkpoint(checkpoint: str | Path, protocol: str, *, dataset: str | None = None,
                        data: str | None = None, device: str = "auto", random_init: bool = False,
                        **params: Any) -> EvalResult:
    """Evaluate a checkpoint's backbone; by default on its pretraining dataset's full train and test splits.

    ``random_init=True`` evaluates the same architecture at its random initialisation (same
    seed), the baseline a pretrained backbone should beat.
    """
    from cssl_core.data import load_dataset
    from cssl_core.train.checkpoint import build_encoder_from_checkpoint, load_checkpoint

    protocol_params(protocol, params)  # bad parameters fail before the data is loaded
    state = load_checkpoint(checkpoint)
    config = state["config"]
    name = dataset or config["dataset"]
    path = data if (data or dataset) else config["data"]
    images = load_dataset(name, path, image_size=state["image_size"])
    if images.image_size != state["image_size"]:
        raise ConfigError(f"dataset {name!r} has {images.image_size}px images but the checkpoint was trained on "
                          f"{state['image_size']}px; evaluate on a dataset of that size")
    dev = resolve_device(device)
    norm = state["normalization"]
    if protocol == "attention":
        p = protocol_params(protocol, params)
        extra = attention_extra(state, images.test, images.classes, p, dev)
        result = EvalResult(protocol=protocol, top1=None, top5=None, parameters=dataclasses.asdict(p),
                            dataset=images.name, num_train=0, num_test=len(extra["labels"]), extra=extra)
    elif protocol in END_TO_END_PROTOCOLS:
        result = _train_end_to_end(state, images, protocol, protocol_params(protocol, params), norm, dev, random_init)
    else:
        backbone = build_encoder_from_checkpoint(state, random_init=random_init)
        backbone = backbone.to(dev).to(memory_format=torch.channels_last)
        result = evaluate_backbone(backbone, images, protocol, mean=norm["mean"], std=norm["std"], device=dev, **params)
    result.epoch = state["step"] // state["steps_per_epoch"]
    result.extra["random_init"] = random_init
    return result


def _train_end_to_end(state: dict[str, Any], data, protocol: str, p: Any, norm: dict, device: torch.device,
                      random_init: bool) -> EvalResult:
    """Fine-tune (or fine-tune and distill) the checkpoint's ``encoder_for_finetune``; with
    ``random_init`` the same architecture from scratch: the supervised baseline."""
    from cssl_core.train.checkpoint import build_encoder_from_checkpoint

    def encoder(random: bool) -> nn.Module:
        return build_encoder_from_checkpoint(state, random_init=random, for_finetune=True).to(device)

    mean, std = norm["mean"], norm["std"]
    if protocol == "finetune":
        model, extra = finetune(encoder(random_init), data, p, mean, std, device)
    else:
        model, teacher, extra = distill(encoder(random_init), encoder(random_init or p.student_init == "random"),
                                        data, p, mean, std, device)
        extra["teacher_top1"], _ = _topk_accuracy(predict(teacher, data.test.images, mean, std, device), data.test.labels)
    top1, top5 = _topk_accuracy(predict(model, data.test.images, mean, std, device), data.test.labels)
    return EvalResult(protocol=protocol, top1=top1, top5=top5, parameters=dataclasses.asdict(p), dataset=data.name,
                      num_train=extra["num_labelled"], num_test=len(data.test.labels), extra=extra)


__all__ = ["AttentionParams", "DistillParams", "EmbeddingParams", "EvalResult", "FinetuneParams", "KnnParams", "LinearProbeParams", "PROTOCOLS", "PROTOCOL_PARAMS", "evaluate_backbone",
           "evaluate_checkpoint", "extract_features", "knn_predict", "knn_scores", "protocol_params"]

"""Linear probe on frozen features: features are computed once, then only a linear layer trains."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cssl_core.config import check_bounds, option
from cssl_core.evaluation.features import extract_features
from cssl_core.evaluation.finetune import labelled_fraction
from cssl_core.evaluation.protocol import Protocol, register_protocol
from cssl_core.evaluation.result import ProtocolOutput, topk_accuracy


@dataclass
class LinearProbeParams:
    label_fraction: float = option(
        1.0, "train on a seeded, class-balanced fraction of the labels (as fine-tuning)", gt=0, le=1
    )
    epochs: int = option(100, "epochs over the labelled features", ge=1)
    batch_size: int = option(256, "features per step", ge=1)
    lr: float = option(0.1, "peak learning rate of SGD (momentum 0.9, cosine to 0, on standardised features)", gt=0)
    weight_decay: float = option(0.0, "weight decay of the linear layer", ge=0)
    seed: int = option(0, "seed of the labelled fraction and the batch order", ge=0, le=2**32 - 1)

    def validate(self) -> None:
        check_bounds(self)


@register_protocol
class LinearProtocol(Protocol):
    name = "linear"
    summary = "a linear classifier trained on the frozen features of a fraction of the labelled training split"
    params_cls = LinearProbeParams

    def run_features(
        self,
        backbone: nn.Module,
        data,
        params: LinearProbeParams,
        mean: list[float],
        std: list[float],
        device: torch.device,
    ) -> ProtocolOutput:
        train, test = data.train, data.test
        # The probe may see a fraction of the labels, the same images fine-tuning on that fraction sees.
        labelled = labelled_fraction(train.labels, params.label_fraction, params.seed)
        train_labels = train.labels[labelled]
        train_features = extract_features(backbone, train.images[labelled], mean, std, device)
        test_features = extract_features(backbone, test.images, mean, std, device)
        layer, f_mean, f_std = train_linear_probe(train_features, train_labels, len(data.classes), params)
        top1, top5 = topk_accuracy(linear_probe_logits(layer, f_mean, f_std, test_features), test.labels)
        return ProtocolOutput(top1=top1, top5=top5, num_train=len(train_labels), num_test=len(test.labels))


def train_linear_probe(
    train_features: torch.Tensor, train_labels: torch.Tensor, num_classes: int, params: LinearProbeParams
) -> tuple[torch.nn.Linear, torch.Tensor, torch.Tensor]:
    """Fit a linear classifier on (N, D) features; returns (layer, feature mean, feature std).

    Features are standardised with the training set's statistics, which makes one learning
    rate work across backbones (the role of the affine-free BatchNorm in MAE's probe).
    """
    g = torch.Generator().manual_seed(params.seed)
    mean, std = train_features.mean(0), train_features.std(0) + 1e-6
    x = (train_features - mean) / std
    layer = torch.nn.Linear(x.shape[1], num_classes)
    torch.nn.init.zeros_(layer.weight)
    torch.nn.init.zeros_(layer.bias)
    opt = torch.optim.SGD(layer.parameters(), lr=params.lr, momentum=0.9, weight_decay=params.weight_decay)
    steps_per_epoch = max(1, x.shape[0] // params.batch_size)
    total = params.epochs * steps_per_epoch
    step = 0
    for _ in range(params.epochs):
        order = torch.randperm(x.shape[0], generator=g)
        for i in range(steps_per_epoch):
            idx = order[i * params.batch_size : (i + 1) * params.batch_size]
            for group in opt.param_groups:
                group["lr"] = 0.5 * params.lr * (1 + math.cos(math.pi * step / total))
            loss = F.cross_entropy(layer(x[idx]), train_labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    return layer, mean, std


@torch.no_grad()
def linear_probe_logits(
    layer: torch.nn.Linear, mean: torch.Tensor, std: torch.Tensor, features: torch.Tensor
) -> torch.Tensor:
    return layer((features - mean) / std)

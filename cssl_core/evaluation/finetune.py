"""Semi-supervised fine-tuning on a fraction of the labels (SimCLR v2, arXiv 2006.10029, Sec. 2 and App. B).

The whole encoder trains with a linear classifier on top, on a seeded, class-balanced
``label_fraction`` of the training labels, with random crops and flips only. The classifier
starts at zero (the official ``zero_init_logits_layer``), so the first steps move the head
before they disturb the encoder. :func:`train_classifier` is shared with distillation.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cssl_core.augment import ViewGenerator, ViewSpec
from cssl_core.config import check_bounds, option
from cssl_core.device import autocast_for
from cssl_core.errors import TrainingError
from cssl_core.evaluation.protocol import CheckpointInput, Protocol, register_protocol
from cssl_core.evaluation.result import ProtocolOutput, topk_accuracy
from cssl_core.sizes import SMALL_IMAGE_MAX_SIZE
from cssl_core.train.schedules import BudgetFit

# Small labelled sets give few steps per epoch: train for at least this many steps.
MIN_STEPS = 500


@dataclass
class FinetuneParams:
    label_fraction: float = option(0.1, "fraction of the training labels, e.g. 0.01 for 1%", gt=0, le=1)
    # None: the paper's 60 epochs for 1% of the labels and 30 for 10% or more (App. B), or as many
    # as MIN_STEPS steps take when that is more.
    epochs: int | None = option(None, "training epochs; none: the paper's for the fraction", ge=1)
    # The paper fine-tunes at batch 1024 on 13k-128k images; 64 keeps several steps per epoch on
    # the few hundred labelled images of a small data set.
    batch_size: int = option(64, "images per step (batch norm needs two)", ge=2)
    # SGD with Nesterov momentum, cosine to 0, no weight decay and no warmup (as the official
    # command). lr 0.02 fine-tuned digits better than 0.05 (90.0% against 87.7% at 10% of the labels).
    lr: float = option(0.02, "peak learning rate", gt=0)
    weight_decay: float = option(0.0, "weight decay", ge=0)
    time_budget: float | None = option(None, "seconds of training; the schedule is fitted to it", gt=0)
    seed: int = option(0, "seed of the labelled fraction, the initialisation and the augmentation", ge=0, le=2**32 - 1)

    def validate(self) -> None:
        check_bounds(self)

    def resolved_epochs(self, num_images: int) -> int:
        if self.epochs:
            return self.epochs
        steps_per_epoch = max(1, num_images // self.batch_size)
        return max(60 if self.label_fraction <= 0.01 else 30, math.ceil(MIN_STEPS / steps_per_epoch))


def labelled_fraction(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Indices of a seeded, class-balanced ``fraction`` of the labelled entries of ``labels``
    (at least one per class), in index order."""
    from cssl_core.data import class_balanced_indices

    labelled = (labels >= 0).nonzero().squeeze(1)
    num_classes = int(labels[labelled].unique().numel())
    n = min(len(labelled), max(num_classes, round(fraction * len(labelled))))
    return labelled[class_balanced_indices(labels[labelled], n, seed)]


def crop_and_flip(image_size: int, mean: list[float], std: list[float]) -> ViewGenerator:
    """Fine-tuning's augmentation: Inception-style random crops and flips, no colour changes.
    Small images crop from (0.2, 1) of the area, as our small-image pretraining recipes."""
    low = 0.08 if image_size > SMALL_IMAGE_MAX_SIZE else 0.2
    spec = ViewSpec(size=image_size, crop_scale=(low, 1.0), jitter_p=0.0, grayscale_p=0.0)
    return ViewGenerator([spec], mean, std)


class Classifier(nn.Module):
    """An encoder (images -> (N, D)) with a linear layer to ``num_classes`` logits."""

    def __init__(self, encoder: nn.Module, feature_dim: int, num_classes: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(feature_dim, num_classes)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def classifier_for(encoder: nn.Module, num_classes: int, image_size: int, device: torch.device) -> Classifier:
    encoder = encoder.to(device)
    with torch.no_grad():
        was_training = encoder.training
        feature_dim = encoder.eval()(torch.zeros(2, 3, image_size, image_size, device=device)).shape[1]
        encoder.train(was_training)
    return Classifier(encoder, feature_dim, num_classes).to(device)


def train_classifier(
    model: nn.Module,
    images: torch.Tensor,
    mean: list[float],
    std: list[float],
    device: torch.device,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    time_budget: float | None,
    seed: int,
    labels: torch.Tensor | None = None,
    teacher: nn.Module | None = None,
    temperature: float = 1.0,
) -> int:
    """Train ``model`` (images -> logits) on uint8 ``images`` (N, 3, H, W); returns the steps taken.

    Targets are ``labels`` (N,) with cross-entropy, or the soft labels of ``teacher`` on the same
    augmented view at ``temperature`` (SimCLR v2's distillation loss, Eq. 2). The learning rate
    follows a cosine to 0 over ``epochs``, or over what ``time_budget`` seconds allow.
    """
    if (labels is None) == (teacher is None):
        raise ValueError("give either labels or a teacher")
    generator = torch.Generator().manual_seed(seed)
    make_view = crop_and_flip(images.shape[-1], mean, std)
    batch_size = min(batch_size, len(images))
    steps_per_epoch = len(images) // batch_size
    total = epochs * steps_per_epoch
    fit = BudgetFit(time_budget, total)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    if teacher is not None:
        teacher.eval()
    model.train()
    step, start = 0, time.perf_counter()
    while step < total:
        order = torch.randperm(len(images), generator=generator)
        for i in range(steps_per_epoch):
            if step >= total:
                break
            idx = order[i * batch_size : (i + 1) * batch_size]
            (x,) = make_view(images[idx].to(device), generator)
            for group in optimizer.param_groups:
                group["lr"] = 0.5 * lr * (1 + math.cos(math.pi * step / total))
            with autocast_for(device, "bf16"):
                logits = model(x).float()
                if teacher is None:
                    loss = F.cross_entropy(logits, labels[idx].to(device))
                else:
                    with torch.no_grad():
                        soft = F.softmax(teacher(x).float() / temperature, dim=1)
                    loss = -(soft * F.log_softmax(logits / temperature, dim=1)).sum(1).mean()
            if not torch.isfinite(loss):
                raise TrainingError(f"the loss became {loss.item()} at step {step}; lower lr (now {lr})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            new_total = fit.observe(step, time.perf_counter() - start)
            if new_total is not None:
                total = new_total
    return step


def finetune(
    encoder: nn.Module, data, params: FinetuneParams, mean: list[float], std: list[float], device: torch.device
) -> tuple[Classifier, dict]:
    """Fine-tune ``encoder`` with a new linear classifier on ``params.label_fraction`` of
    ``data.train``'s labels; returns the classifier and what to record beside its accuracy."""
    train = data.train
    idx = labelled_fraction(train.labels, params.label_fraction, params.seed)
    model = classifier_for(encoder, len(data.classes), data.image_size, device)
    steps = train_classifier(
        model,
        train.images[idx],
        mean,
        std,
        device,
        epochs=params.resolved_epochs(len(idx)),
        batch_size=params.batch_size,
        lr=params.lr,
        weight_decay=params.weight_decay,
        time_budget=params.time_budget,
        seed=params.seed,
        labels=train.labels[idx],
    )
    return model, {"num_labelled": len(idx), "steps": steps}


@register_protocol
class FinetuneProtocol(Protocol):
    name = "finetune"
    summary = "the whole encoder fine-tuned with a linear classifier on a fraction of the labels (SimCLR v2)"
    params_cls = FinetuneParams
    needs = "checkpoint"
    trains_encoder = True
    extra = {"num_labelled": "labelled training images fine-tuned on", "steps": "optimiser steps taken"}

    def run_checkpoint(self, checkpoint: CheckpointInput, data, params: FinetuneParams) -> ProtocolOutput:
        # With random_init: the same architecture trained from scratch, the supervised baseline.
        mean, std, device = checkpoint.mean, checkpoint.std, checkpoint.device
        model, extra = finetune(checkpoint.encoder(for_finetune=True), data, params, mean, std, device)
        top1, top5 = topk_accuracy(predict(model, data.test.images, mean, std, device), data.test.labels)
        return ProtocolOutput(
            top1=top1, top5=top5, num_train=extra["num_labelled"], num_test=len(data.test.labels), extra=extra
        )


@torch.no_grad()
def predict(
    model: nn.Module,
    images: torch.Tensor,
    mean: list[float],
    std: list[float],
    device: torch.device,
    batch_size: int = 512,
) -> torch.Tensor:
    """Logits (N, C) on the CPU for uint8 ``images``, model in eval mode."""
    from cssl_core.evaluation.features import extract_features

    return extract_features(model, images, mean, std, device, batch_size=batch_size)

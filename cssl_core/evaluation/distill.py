"""Distillation with unlabelled examples (SimCLR v2, arXiv 2006.10029, Sec. 2, Eq. 2).

A teacher is fine-tuned on ``label_fraction`` of the labels (:mod:`.finetune`); a student then
learns on every training image, labels unused, to match the teacher's class distribution at
temperature T: ``-sum_y P_T(y | x; T) log P_S(y | x; T)``, both on the same augmented view. The
student has the encoder's architecture (self-distillation) and starts from the pretrained
weights or, with ``student_init="random"``, from scratch. The paper can add the labelled
examples' cross-entropy to the loss; here the student sees the teacher's labels only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cssl_core.config import check_bounds, option
from cssl_core.errors import ConfigError
from cssl_core.evaluation.finetune import (
    Classifier,
    FinetuneParams,
    classifier_for,
    finetune,
    predict,
    train_classifier,
)
from cssl_core.evaluation.protocol import CheckpointInput, Protocol, register_protocol
from cssl_core.evaluation.result import ProtocolOutput, topk_accuracy

STUDENT_INITS = ("pretrained", "random")


@dataclass
class DistillParams:
    label_fraction: float = option(0.1, "fraction of the training labels the teacher is fine-tuned on", gt=0, le=1)
    temperature: float = option(1.0, "temperature T of the teacher's and the student's softmax", gt=0)
    epochs: int = option(30, "the student's epochs, over the whole training set", ge=1)
    batch_size: int = option(128, "the student's images per step (batch norm needs two)", ge=2)
    lr: float = option(0.05, "the student's peak learning rate; the teacher is fine-tuned with fine-tuning's", gt=0)
    weight_decay: float = option(0.0, "the student's weight decay", ge=0)
    student_init: str = option("pretrained", f"the student's start: {', '.join(STUDENT_INITS)}")
    time_budget: float | None = option(None, "seconds of the student's training", gt=0)
    finetune_epochs: int | None = option(
        None, "the teacher's epochs; none: fine-tuning's default for the fraction", ge=1
    )
    finetune_time_budget: float | None = option(None, "seconds of the teacher's fine-tuning", gt=0)
    seed: int = option(0, "seed of the labelled fraction, the initialisation and the augmentation", ge=0, le=2**32 - 1)

    def validate(self) -> None:
        check_bounds(self)
        if self.student_init not in STUDENT_INITS:
            raise ConfigError(f"student_init must be one of {', '.join(STUDENT_INITS)}, got {self.student_init!r}")

    def teacher_params(self) -> FinetuneParams:
        return FinetuneParams(
            label_fraction=self.label_fraction,
            epochs=self.finetune_epochs,
            time_budget=self.finetune_time_budget,
            seed=self.seed,
        )


def distill(
    teacher_encoder: nn.Module,
    student_encoder: nn.Module,
    data,
    params: DistillParams,
    mean: list[float],
    std: list[float],
    device: torch.device,
) -> tuple[Classifier, Classifier, dict]:
    """Fine-tune ``teacher_encoder`` into the teacher, then train a classifier on
    ``student_encoder`` against it on every training image; returns (student, teacher, extra)."""
    teacher, teacher_extra = finetune(teacher_encoder, data, params.teacher_params(), mean, std, device)
    student = classifier_for(student_encoder, len(data.classes), data.image_size, device)
    images = data.pretrain_split().images  # labelled or not: the labels are not used
    steps = train_classifier(
        student,
        images,
        mean,
        std,
        device,
        epochs=params.epochs,
        batch_size=params.batch_size,
        lr=params.lr,
        weight_decay=params.weight_decay,
        time_budget=params.time_budget,
        seed=params.seed + 1,
        teacher=teacher,
        temperature=params.temperature,
    )
    extra = {
        "num_labelled": teacher_extra["num_labelled"],
        "teacher_steps": teacher_extra["steps"],
        "steps": steps,
        "num_unlabelled": len(images),
    }
    return student, teacher, extra


@register_protocol
class DistillProtocol(Protocol):
    name = "distill"
    summary = (
        "a teacher fine-tuned on a fraction of the labels, distilled into a student on every training "
        "image (SimCLR v2); the student's accuracy"
    )
    params_cls = DistillParams
    needs = "checkpoint"
    trains_encoder = True
    extra = {
        "num_labelled": "labelled training images the teacher was fine-tuned on",
        "teacher_steps": "the teacher's optimiser steps",
        "steps": "the student's optimiser steps",
        "num_unlabelled": "training images the student learnt from, labels unused",
        "teacher_top1": "the teacher's top-1 accuracy in percent on the test split",
    }

    def run_checkpoint(self, checkpoint: CheckpointInput, data, params: DistillParams) -> ProtocolOutput:
        mean, std, device = checkpoint.mean, checkpoint.std, checkpoint.device
        teacher_encoder = checkpoint.encoder(for_finetune=True)
        random_student = checkpoint.random_init or params.student_init == "random"
        student_encoder = checkpoint.encoder(random_init=random_student, for_finetune=True)
        student, teacher, extra = distill(teacher_encoder, student_encoder, data, params, mean, std, device)
        labels = data.test.labels
        extra["teacher_top1"], _ = topk_accuracy(predict(teacher, data.test.images, mean, std, device), labels)
        top1, top5 = topk_accuracy(predict(student, data.test.images, mean, std, device), labels)
        return ProtocolOutput(top1=top1, top5=top5, num_train=extra["num_labelled"], num_test=len(labels), extra=extra)

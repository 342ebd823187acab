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

from cssl_core.errors import ConfigError
from cssl_core.evaluation.finetune import (
    Classifier,
    FinetuneParams,
    check_label_fraction,
    check_training,
    classifier_for,
    finetune,
    train_classifier,
)

STUDENT_INITS = ("pretrained", "random")


@dataclass
class DistillParams:
    label_fraction: float = 0.1  # the teacher's fine-tuning labels
    temperature: float = 1.0
    epochs: int = 30  # the student's, over the whole training set
    batch_size: int = 128
    lr: float = 0.05  # the student's; the teacher is fine-tuned with fine-tuning's defaults
    weight_decay: float = 0.0
    student_init: str = "pretrained"
    time_budget: float | None = None  # seconds of the student's training
    finetune_epochs: int | None = None  # the teacher's; none: fine-tuning's default for the fraction
    finetune_time_budget: float | None = None  # seconds of the teacher's fine-tuning
    seed: int = 0

    def validate(self) -> None:
        check_label_fraction(self.label_fraction)
        check_training(self.epochs, self.batch_size, self.lr, self.weight_decay, self.time_budget)
        self.teacher_params().validate()
        if not self.temperature > 0:
            raise ConfigError(f"distill temperature must be positive, got {self.temperature}")
        if self.student_init not in STUDENT_INITS:
            raise ConfigError(f"student_init must be one of {', '.join(STUDENT_INITS)}, got {self.student_init!r}")

    def teacher_params(self) -> FinetuneParams:
        return FinetuneParams(label_fraction=self.label_fraction, epochs=self.finetune_epochs,
                              time_budget=self.finetune_time_budget, seed=self.seed)


def distill(teacher_encoder: nn.Module, student_encoder: nn.Module, data, params: DistillParams,
            mean: list[float], std: list[float], device: torch.device) -> tuple[Classifier, Classifier, dict]:
    """Fine-tune ``teacher_encoder`` into the teacher, then train a classifier on
    ``student_encoder`` against it on every training image; returns (student, teacher, extra)."""
    teacher, teacher_extra = finetune(teacher_encoder, data, params.teacher_params(), mean, std, device)
    student = classifier_for(student_encoder, len(data.classes), data.image_size, device)
    images = data.pretrain_split().images  # labelled or not: the labels are not used
    steps = train_classifier(student, images, mean, std, device, epochs=params.epochs, batch_size=params.batch_size,
                             lr=params.lr, weight_decay=params.weight_decay, time_budget=params.time_budget,
                             seed=params.seed + 1, teacher=teacher, temperature=params.temperature)
    extra = {"num_labelled": teacher_extra["num_labelled"], "teacher_steps": teacher_extra["steps"],
             "steps": steps, "num_unlabelled": len(images)}
    return student, teacher, extra

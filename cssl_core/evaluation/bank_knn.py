"""Weighted kNN against a memory bank (Wu et al., InstDisc, arXiv 1805.01978, Sec. 3.4): the
bank's rows stand for the training images, so only the test split is embedded."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from cssl_core.evaluation.features import extract_features
from cssl_core.evaluation.knn import knn_scores
from cssl_core.evaluation.protocol import protocol_params
from cssl_core.evaluation.result import EvalResult, topk_accuracy


def evaluate_memory_bank(
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    embed: nn.Module,
    data,
    *,
    mean: list[float],
    std: list[float],
    device: torch.device,
    **params: Any,
) -> EvalResult:
    """kNN of ``data``'s test split (an ImageDataset) against ``bank`` (num_samples, D).

    ``bank_labels`` (num_samples,): the labels of the images the bank was trained on, in index
    order; rows labelled -1 (unlabelled images) are left out. ``embed`` maps test images to the
    bank's space. The result's parameters say ``"features": "memory_bank"``.
    """
    p = protocol_params("knn", params)
    labelled = bank_labels >= 0
    train_features = bank.detach().float().cpu()[labelled.cpu()]
    train_labels = bank_labels.cpu()[labelled.cpu()]
    test_features = extract_features(embed, data.test.images, mean, std, device)
    scores = knn_scores(train_features, train_labels, test_features, len(data.classes), p.k, p.temperature)
    top1, top5 = topk_accuracy(scores, data.test.labels)
    return EvalResult(
        protocol="knn",
        top1=top1,
        top5=top5,
        parameters={**dataclasses.asdict(p), "features": "memory_bank"},
        dataset=data.name,
        num_train=len(train_labels),
        num_test=len(data.test.labels),
    )

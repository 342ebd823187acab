"""The method contract: what a method declares, what each step gives it, and the hooks the loop calls.

A method is an ``nn.Module`` composed of a backbone, its heads and a loss. The loop knows no
method by name: it asks the method for its views (:meth:`Method.view_specs`), its extra
per-step schedules (:meth:`Method.schedules`) and its frozen parameters, hands each step a
:class:`Batch`, and calls :meth:`Method.on_epoch_start` and :meth:`Method.after_step`.
Everything a method keeps between steps (momentum encoders, queues, memory banks, centres)
is a parameter or a buffer, so it is in ``state_dict`` and a resumed run continues exactly.

Views, and the images evaluation gives :meth:`Method.encoder_for_eval`, arrive normalised with
the training data's per-channel mean and std. ``build_method`` hands the method that
normalisation (the loop's channel statistics, or a checkpoint's ``"normalization"``); it is kept
in the buffers ``input_mean`` and ``input_std`` (3,), and :meth:`Method.pixels` undoes it for a
method that works on pixel values (CMC's Lab colour space). They stay out of ``state_dict``: they
come with the data, not with training, and every checkpoint keeps the keys it had.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
from torch import nn

from cssl_core.augment import ViewSpec, preset_views
from cssl_core.backbones import build_backbone
from cssl_core.config import MethodConfig
from cssl_core.errors import ConfigError

if TYPE_CHECKING:
    from cssl_core.config import PretrainConfig


@dataclass
class Batch:
    """One training step's input."""

    views: list[torch.Tensor]  # one (N, 3, s, s) tensor per declared view, normalised, in declared order
    indices: torch.Tensor  # (N,) long: each sample's index in the training split, on the views' device
    step: int  # optimiser steps done before this one
    epoch: int  # 0-based epoch of this step
    # Every schedule's value at this step: "lr" and "weight_decay" always, plus the method's own
    # (:meth:`Method.schedules`), e.g. "momentum" or "teacher_temp".
    schedules: dict[str, float]


@dataclass
class StepOutput:
    """What one training step of a method returns."""

    loss: torch.Tensor
    # Scalars worth plotting besides the loss (e.g. ``{"pos_sim": 0.8}``): floats, or 0-d tensors,
    # which the loop reads only on the steps it reports (no device sync on the others).
    stats: dict[str, float | torch.Tensor] = field(default_factory=dict)


@dataclass
class TrainingSet:
    """What an epoch hook may use: the training split's size and a way to embed all of it."""

    num_samples: int
    steps_per_epoch: int
    # ``embed(module, batch_statistics=False)``: module applied to every training image
    # (normalised, not augmented, module in eval mode), float32 (num_samples, D) on the training
    # device, in index order. ``batch_statistics``: module in train mode over seeded shuffled
    # batches of the run's batch size, each normalised by its own BatchNorm statistics.
    embed: Callable[..., torch.Tensor]


class Method(nn.Module):
    """Base class: ``backbone`` maps images (N, 3, H, W) to features (N, feature_dim).

    Subclasses build their heads in ``__init__`` (``num_samples`` sizes per-sample state such
    as memory banks) and implement :meth:`forward`; the hooks below default to nothing. One whose
    backbone is not the configured RGB encoder (CMC's encoders of L and of ab) overrides
    :meth:`build_backbone`.
    """

    name: ClassVar[str]
    paper: ClassVar[str]
    arxiv: ClassVar[str]
    config_cls: ClassVar[type[MethodConfig]]
    # How many views a step may take; a preset that makes more or fewer is rejected by build_config.
    min_views: ClassVar[int] = 2
    max_views: ClassVar[int | None] = 2
    # Multi-crop methods: the number of global crops the augmentation preset must make (the
    # method adds its local crops); None: the preset makes all the views.
    global_crops: ClassVar[int | None] = None
    # Whether a run on several processes (config nproc > 1, or torchrun) gives this method's
    # one-process numbers: tests/test_distributed.py checks each method that says so.
    distributed: ClassVar[bool] = False

    def __init__(self, backbone: nn.Module, feature_dim: int, config: MethodConfig, num_samples: int):
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.config = config
        self.num_samples = num_samples
        # Until set_input_normalization: mean 0 and std 1, views taken to be pixel values in [0, 1].
        self.register_buffer("input_mean", torch.zeros(3), persistent=False)
        self.register_buffer("input_std", torch.ones(3), persistent=False)

    @classmethod
    def build_backbone(cls, config: PretrainConfig, image_size: int) -> tuple[nn.Module, int]:
        """``(backbone, feature_dim)``: by default the configured backbone on RGB images."""
        mc = config.method_config
        return build_backbone(config.backbone, image_size, norm=mc.norm, frozen_patch_embed=mc.frozen_patch_embed)

    @torch.no_grad()
    def set_input_normalization(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """The per-channel ``mean`` and ``std`` (each of length 3) the views are normalised with."""
        self.input_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.input_std.copy_(torch.as_tensor(std, dtype=torch.float32))

    def pixels(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images (N, 3, H, W) -> float32 pixel values, in [0, 1] up to rounding."""
        return images.float() * self.input_std.view(1, 3, 1, 1) + self.input_mean.view(1, 3, 1, 1)

    @classmethod
    def preset_specs(cls, config: MethodConfig, image_size: int) -> list[ViewSpec]:
        """The config's augmentation preset's views, at its ``crop_min_scale`` and ``jitter_strength``."""
        crop_scale = (config.crop_min_scale, 1.0) if config.crop_min_scale else None
        return preset_views(config.augmentation, image_size, crop_scale, config.jitter_strength)

    @classmethod
    def view_specs(cls, config: MethodConfig, image_size: int) -> list[ViewSpec]:
        """The views each step gets, in order: by default the preset's."""
        return cls.preset_specs(config, image_size)

    @classmethod
    def check_config(cls, config: PretrainConfig, image_size: int) -> None:
        """Reject a combination that cannot train; called by ``build_config``."""
        mc = config.method_config
        if cls.global_crops is not None:
            made = len(cls.preset_specs(mc, image_size))
            if made != cls.global_crops:
                raise ConfigError(
                    f"{cls.name} takes its {cls.global_crops} global crops from the augmentation preset, "
                    f"and {mc.augmentation!r} makes {made}; use a two-view preset and set local_crops "
                    "for the local ones"
                )
        cls.check_processes(config.nproc)
        views = cls.view_specs(mc, image_size)
        low, high = cls.min_views, cls.max_views
        if len(views) < low or (high is not None and len(views) > high):
            wanted = f"exactly {low}" if low == high else f"at least {low}" if high is None else f"{low} to {high}"
            raise ConfigError(
                f"{cls.name} takes {wanted} views per image; augmentation "
                f"{config.method_config.augmentation!r} makes {len(views)}"
            )
        for spec in views:
            spec.validate()

    @classmethod
    def check_processes(cls, processes: int) -> None:
        """Refuse a run on several processes unless the method supports it."""
        if processes > 1 and not cls.distributed:
            from cssl_core.registry import METHODS

            able = [name for name in METHODS.names() if METHODS.get(name).distributed]
            raise ConfigError(
                f"nproc must be 1 for {cls.name}, which runs on one process only; the methods that run on several are: "
                f"{', '.join(able) or 'none yet'}"
            )

    def forward(self, batch: Batch) -> StepOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def schedules(self, total_steps: int, steps_per_epoch: int) -> dict[str, np.ndarray]:
        """The method's own per-step schedules (each of shape (total_steps,)), by name.

        ``steps_per_epoch`` is one planned epoch of this run: ``total_steps / epochs``, fewer than
        an epoch's batches when a time budget shortens the run, so that a schedule in epochs keeps
        its share of the run, as a freeze does (:meth:`frozen_parameters`)."""
        return {}

    def on_epoch_start(self, epoch: int, training_set: TrainingSet) -> None:
        """Called before an epoch's first step (a run resumed mid-epoch has that epoch's state
        from its checkpoint, so the hook is not called again)."""

    @torch.no_grad()
    def after_step(self, batch: Batch) -> None:
        """Called after each optimiser step (EMA updates, centre updates, normalisations)."""

    def step_warning(self, stats: dict[str, float]) -> str | None:
        """A message when a reported step's ``stats`` show the method going wrong (the loop says
        it once per run); None while they look healthy."""
        return None

    def frozen_parameters(self) -> list[tuple[list[nn.Parameter], float]]:
        """``(parameters, epochs)`` pairs: those parameters get no update for the first ``epochs``
        of the run's planned epochs. The trainer keeps that share of the run when a time budget
        changes its length (1 epoch of 100 freezes the first 1% of the steps the budget allows)."""
        return []

    def encoder_for_eval(self) -> nn.Module:
        """The module evaluation and export use: images (N, 3, H, W) -> features (N, D)."""
        return self.backbone

    def encoder_for_finetune(self) -> nn.Module:
        """The module fine-tuning starts from (a classifier goes on top): by default the
        evaluation encoder; SimCLR v2 adds its projector's first layer."""
        return self.encoder_for_eval()

    def knn_bank(self) -> tuple[torch.Tensor, nn.Module] | None:
        """A memory bank the per-epoch kNN may use as its training features: the bank
        (num_samples, D) in index order and the module mapping images (N, 3, H, W) to the same
        normalised D-dim space. None (the default): the kNN embeds the training set afresh."""
        return None

    def parameter_groups(self) -> list[dict]:
        """Optimiser groups. Biases and norm parameters skip weight decay and LARS adaptation."""
        decay, no_decay = [], []
        for p in self.parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim <= 1 else decay).append(p)
        return [
            {"params": decay, "name": "weights"},
            {"params": no_decay, "name": "biases_and_norms", "wd_scale": 0.0, "lars_exclude": True},
        ]

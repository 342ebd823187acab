"""SwAV: swapping assignments between views (Caron et al., arXiv 2006.09882).

Each crop is embedded (backbone, projection MLP, L2 normalisation) and scored against K unit
prototypes (Sec. 3.1). Codes come from the two global crops only, by Sinkhorn-Knopp under an
equal-partition constraint (Eq. 3); each global crop's code is predicted from every other crop
(the swapped prediction, Eq. 1-2), the local crops of multi-crop included (Sec. 3.2). With a
small batch, a queue of earlier embeddings joins the batch in the Sinkhorn step (Sec. 4, App.).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cssl_core import distributed
from cssl_core.augment import ViewSpec, local_views, scale_jitter
from cssl_core.config import MethodConfig, option
from cssl_core.errors import ConfigError
from cssl_core.losses import swav_loss
from cssl_core.losses.precision import full_precision
from cssl_core.methods.base import Batch, Method, StepOutput
from cssl_core.methods.heads import mlp
from cssl_core.registry import register

if TYPE_CHECKING:
    from cssl_core.config import PretrainConfig

GLOBAL_CROPS = 2  # the crops codes are computed from (the official crops_for_assign = [0, 1])


@dataclass
class SwAVConfig(MethodConfig):
    # App. A.1 and the official scripts/swav_800ep_pretrain.sh: LARS with trust coefficient 0.001
    # (the official LARC), lr 4.8 at batch 4096 (= 0.3 x batch/256), cosine decay, 10 warmup
    # epochs, weight decay 1e-6; global crops of scale (0.14, 1) (min_scale_crops) in SimCLR's
    # colour pipeline, 2x224 + 6x96 crops, 3000 prototypes frozen for the first epoch (313
    # iterations at 4096), tau 0.1, eps 0.05, 3 Sinkhorn iterations; queue 3840 from epoch 15
    # only in the small-batch runs (swav_200ep_bs256_pretrain.sh).
    optimizer: str = "lars"
    base_lr: float = 0.3
    weight_decay: float = 1e-6
    lars_eta: float = 0.001
    warmup_epochs: float = 10.0
    augmentation: str = "simclr"
    crop_min_scale: float | None = 0.14
    local_crops: int = option(6, "local crops per image besides the 2 global ones (multi-crop; 0: none)", ge=0)
    temperature: float = option(0.1, "softmax temperature of the predictions", gt=0)
    epsilon: float = option(0.05, "Sinkhorn-Knopp entropy regularisation of the codes", gt=0)
    sinkhorn_iterations: int = option(3, "Sinkhorn-Knopp normalisation rounds", ge=1)
    projector_hidden_dim: int = option(2048, "projection MLP hidden width", ge=1)
    projector_dim: int = option(128, "embedding dimension (the prototypes' dimension)", ge=1)
    nmb_prototypes: int = option(3000, "number of prototypes K", ge=1)
    freeze_prototypes_epochs: float = option(
        1.0,
        "planned epochs with the prototypes fixed from the start (the same share of a time-budgeted run)",
        ge=0,
    )
    queue_length: int = option(
        0, "embeddings of earlier batches kept per global crop for the codes (0: no queue)", ge=0
    )
    epoch_queue_starts: int = option(
        15,
        "planned epoch from which the queue is filled, used once full (the same share of a time-budgeted run)",
        ge=0,
    )

    # For images of 64 px or less (CIFAR on a CPU, short runs); reasons, measured where said:
    # - nmb_prototypes 100: the paper's ratio K / batch = 3000 / 4096 at batch 128 (about 94),
    #   10 per class on a 10-class set. With K below the batch the equal partition can be met
    #   by nearly one-hot codes without a queue; at K = 3000 each prototype would get 0.04
    #   samples a batch and every code would be spread over 23 prototypes or more.
    # - base_lr 0.6 and lars_eta 0.02: the official batch-256 recipe's lr (swav_200ep_bs256).
    #   Our LARS moves a weight matrix by lr x eta of its norm, 0.006 a step at batch 128, near
    #   SimCLR's measured best here (0.15 x 0.05); eta 0.001 was tuned for batch 4096.
    #   solo-learn's CIFAR SwAV also has eta 0.02, but its LARS clips (clip_lr: a step of at
    #   most eta of the norm), so the two settings are not the same update.
    # - crop_min_scale 0.2: global crops of (0.2, 1) beat (0.08, 1) for SimCLR here.
    # - local_crops 0, measured (BENCHMARKS.md, "The other methods, CIFAR-10 kNN within a 5-minute
    #   budget"): the two global crops alone score 53.3% kNN against 41.9% with the paper's six
    #   14 px crops, which carry 12 of the 14 swapped predictions per image on 32 px images; the
    #   CIFAR SwAV of solo-learn uses two 32 px crops too. recipe=paper keeps the six.
    # - queue_length stays 0: with K below the batch the codes need no extra samples, and a
    #   short run changes its features too fast for stale embeddings. (Set, it starts at
    #   epoch_queue_starts of the planned epochs: the same share of a time-budgeted run.)
    small_image_recipe: ClassVar[dict[str, Any]] = {
        "batch_size": 128,
        "nmb_prototypes": 100,
        "base_lr": 0.6,
        "lars_eta": 0.02,
        "crop_min_scale": 0.2,
        "local_crops": 0,
    }


@register
class SwAV(Method):
    name = "swav"
    paper = "Unsupervised Learning of Visual Features by Contrasting Cluster Assignments (Caron et al., 2020)"
    arxiv = "2006.09882"
    config_cls = SwAVConfig
    distributed = True  # codes from the global batch's scores; every rank's embeddings queued
    min_views = GLOBAL_CROPS
    max_views = None
    global_crops = GLOBAL_CROPS

    def __init__(self, backbone: nn.Module, feature_dim: int, config: SwAVConfig, num_samples: int):
        super().__init__(backbone, feature_dim, config, num_samples)
        self.projector = mlp(feature_dim, config.projector_hidden_dim, config.projector_dim)
        self.prototypes = nn.Linear(config.projector_dim, config.nmb_prototypes, bias=False)  # rows: (K, D)
        # The official loop normalises the prototypes at the start of every iteration. Normalising
        # once here and after every optimiser step (after_step) gives each forward the same unit
        # prototypes, and keeps the stored weights unit as well.
        self._normalize_prototypes()
        # (2, Q, D): the latest Q embeddings of each global crop, newest first; all zeros until
        # epoch_queue_starts, as the official queue is created then.
        self.register_buffer("queue", torch.zeros(GLOBAL_CROPS, config.queue_length, config.projector_dim))

    @classmethod
    def view_specs(cls, config: SwAVConfig, image_size: int) -> list[ViewSpec]:
        """The preset's views (``preset_views``: the global crops, at ``crop_min_scale``), then
        ``local_crops`` local ones."""
        global_views = cls.preset_specs(config, image_size)
        local = [scale_jitter(spec, config.jitter_strength) for spec in local_views(image_size, config.local_crops)]
        return global_views + local

    @classmethod
    def check_config(cls, config: PretrainConfig, image_size: int) -> None:
        mc = config.method_config
        if mc.queue_length:
            if mc.queue_length < config.batch_size:
                raise ConfigError(
                    f"queue_length {mc.queue_length} is shorter than a batch ({config.batch_size}); "
                    "make it at least batch_size (the paper: 3840 at batch 256) or 0 for no queue"
                )
            if mc.epoch_queue_starts >= config.epochs:
                raise ConfigError(
                    f"epoch_queue_starts {mc.epoch_queue_starts} is not before the end of the run "
                    f"({config.epochs} epochs), so the queue would never be used; lower it or "
                    "set queue_length=0"
                )
        super().check_config(config, image_size)

    def frozen_parameters(self) -> list[tuple[list[nn.Parameter], float]]:
        # Sec. 4 / App. A.1: prototypes fixed during the first epoch (the official freeze_prototypes_niters).
        epochs = self.config.freeze_prototypes_epochs
        return [([self.prototypes.weight], epochs)] if epochs else []

    def schedules(self, total_steps: int, steps_per_epoch: int) -> dict[str, np.ndarray]:
        # 1 from the first step of epoch ``epoch_queue_starts``: of the planned epochs, so a time
        # budget that shortens the run starts the queue at the same share of it.
        start = self.config.epoch_queue_starts * steps_per_epoch
        return {"queue_filling": (np.arange(total_steps) >= start).astype(np.float64)}

    @torch.no_grad()
    def after_step(self, batch: Batch) -> None:
        self._normalize_prototypes()

    @torch.no_grad()
    def _normalize_prototypes(self) -> None:
        self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))

    @full_precision
    def _embed_and_score(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Projector outputs (M, D) -> unit embeddings (M, D) and prototype scores (M, K), in
        float32: scores are divided by eps = 0.05 inside exp(), where bf16 rounding would show."""
        z = F.normalize(h.float(), dim=1)
        return z, self.prototypes(z)

    def forward(self, batch: Batch) -> StepOutput:
        cfg = self.config
        n = batch.views[0].shape[0]
        global_views, local = batch.views[:GLOBAL_CROPS], batch.views[GLOBAL_CROPS:]
        # One backbone pass per resolution (the official multi-resolution forward), one head pass
        # over all crops: BN statistics in the head span every crop.
        features = [self.backbone(torch.cat(global_views))]
        if local:
            features.append(self.backbone(torch.cat(local)))
        z, scores = self._embed_and_score(self.projector(torch.cat(features)))  # (V*N, D), (V*N, K)
        crop_scores = list(scores.split(n))  # one (N, K) per crop, in view order
        filling = batch.schedules["queue_filling"] > 0
        queue_scores = self._use_and_fill_queue(filling, z[: GLOBAL_CROPS * n].detach())
        loss = swav_loss(
            crop_scores[:GLOBAL_CROPS],
            crop_scores[GLOBAL_CROPS:],
            cfg.temperature,
            cfg.epsilon,
            cfg.sinkhorn_iterations,
            queue_scores,
        )
        return StepOutput(loss=loss, stats={"queue_in_use": float(queue_scores is not None)})

    @full_precision
    @torch.no_grad()
    def _use_and_fill_queue(self, filling: bool, z_global: torch.Tensor) -> list[torch.Tensor] | None:
        """z_global: (2N, D), the global crops' embeddings. Returns each global crop's queued
        scores (Q, K), or None while the queue is off or not yet full.

        As the official loop: from ``epoch_queue_starts`` the queue shifts in each batch's
        embeddings, and is used once its last row is non-zero, i.e. once it is full (its
        ``use_the_queue`` flag only remembers that, which the queue's contents already tell).
        The scores use the current prototypes and the queue as it was before this batch.
        """
        if self.queue.shape[1] == 0 or not filling:
            return None
        full = bool(self.queue[:, -1].any())
        queue_scores = [self.prototypes(q) for q in self.queue] if full else None
        z_global = z_global.reshape(GLOBAL_CROPS, z_global.shape[0] // GLOBAL_CROPS, -1)
        # Every rank's embeddings, in the one-process order: each rank keeps the whole queue.
        z_global = torch.stack([distributed.gather_no_grad(z) for z in z_global])  # (2, N, D)
        n = z_global.shape[1]
        self.queue[:, n:] = self.queue[:, :-n].clone()
        self.queue[:, :n] = z_global.to(self.queue.dtype)
        return queue_scores

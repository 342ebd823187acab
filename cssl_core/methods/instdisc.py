"""Instance Discrimination: non-parametric instance-level discrimination with a memory bank
(Wu et al., arXiv 1805.01978; official code zhirongw/lemniscate.pytorch).

Every image is its own class. The backbone and a linear head map one augmented view per image
to a unit 128-d feature f (Sec. 3.1); the memory bank holds one unit feature per training image
(Sec. 3.2). The image's own bank row is the positive and K = 4096 rows drawn uniformly from the
bank are the noise samples of an NCE loss (Eq. 5-7) whose normalising constant Z is estimated
once, from the first batch (Sec. 3.2; ``NCEAverage`` in the official code), and kept. After each
step the batch's rows move towards the step's features with momentum 0.5, then are renormalised.
The bank also gives the paper's cheap kNN (Sec. 3.4): see :meth:`InstDisc.knn_bank`.

The first-batch Z is a hazard the run watches: a new network's features are nearly collinear and
the bank starts random, so as the bank fills with real features the true log Z climbs well past
the estimate and the summed noise posteriors grow (hundreds in a 5-minute CIFAR run), until the
noise term, the same direction for every image, carries nearly all the gradient and features and
bank collapse together. Each reported step gives ``positive_h``, ``noise_h_sum`` (see
:func:`cssl_core.losses.nce.nce_posteriors`) and ``log_z_drift`` (this batch's estimate of log Z
less the one in use), and the run warns once when ``noise_h_sum`` passes 10. The small-image recipe
avoids the hazard: it trains the non-parametric softmax (Eq. 2) over the positive and the same K noise
rows (``loss=softmax``, the approximation CMC's official ResNets use), and under ``loss=nce`` it
re-estimates Z from every batch (``nce_z=every_step``); ``recipe=paper`` keeps the NCE with the
first-batch Z. The memory bank and its one refresh per row per epoch are the same under all three.

Not implemented: the proximal regularisation (Sec. 3.3), an option of the paper. The official
step decay of the learning rate (x0.1 at epochs 120 and 160 of 200) is our cosine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from cssl_core import distributed
from cssl_core.augment import ViewSpec
from cssl_core.config import MethodConfig, option
from cssl_core.errors import ConfigError
from cssl_core.losses import Z_ESTIMATES, nce_log_z, nce_loss, nce_posteriors, nce_softmax_loss, update_log_z
from cssl_core.methods.base import Batch, Method, StepOutput
from cssl_core.methods.heads import L2Normalize
from cssl_core.methods.memory_bank import MemoryBank, bank_logits
from cssl_core.registry import register

# The summed noise posteriors past which a run says the NCE noise term dominates its gradient.
NOISE_H_SUM_WARNING = 10.0
LOSSES = ("nce", "softmax")


@dataclass
class InstDiscConfig(MethodConfig):
    # Sec. 4 and official main.py: SGD with momentum 0.9, lr 0.03 at batch 256, weight decay 5e-4
    # (the paper's; main.py's flag defaults to 1e-4), no warmup, 200 epochs; T = 0.07, 128-d
    # features, K = 4096 noise samples, bank momentum 0.5. Augmentation: official main.py's crop
    # (0.2, 1), grayscale 0.2, jitter 0.4 x 4, flip, which is our mocov1 preset.
    optimizer: str = "sgd"
    base_lr: float = 0.03
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.0
    augmentation: str = "mocov1"
    temperature: float = option(0.07, "temperature T of the logits f . v / T", gt=0)
    embedding_dim: int = option(128, "dimension of the unit features the memory bank stores", ge=1)
    num_negatives: int = option(4096, "noise samples K drawn uniformly from the memory bank per image", ge=1)
    bank_momentum: float = option(0.5, "a bank row becomes normalize(m * row + (1 - m) * new feature)", ge=0, lt=1)
    loss: str = option(
        "nce",
        "nce: the paper's NCE over the positive and K noise rows (Eq. 5-7); softmax: the non-parametric "
        "softmax (Eq. 2) over the same 1 + K rows, the positive's cross-entropy",
    )
    nce_z: str = option(
        "first_batch",
        "loss=nce's normalising constant Z: first_batch, estimated once and kept (the paper's); "
        "every_step, each batch's mean exp(logit) x the bank size",
    )

    # The official cifar.py: batch 128 at lr 0.03 (0.06 per 256 by the linear rule), T = 0.1, K = 4096,
    # weight decay 5e-4. cifar.py drops the flip and steps the lr down; here the flip and the cosine stay.
    # The paper's NCE with Z fixed on the first batch collapses in a short run (BENCHMARKS.md: 18.1%
    # kNN after 9.9 epochs, below the random network's 38.9%; see the module docstring): the small-image
    # recipe trains the softmax over the same 1 + K rows, and re-estimates Z every step under loss=nce.
    # Measured (BENCHMARKS.md, 10 epochs, the epochs 300 s buy on the AVX-512 machine): the softmax
    # 35.8% kNN against the collapse's 18.1%, still under the random network. nce_z=every_step is
    # from the short-run collapse test only (bank cosine 0.09 against 0.96), not a kNN run.
    small_image_recipe: ClassVar[dict[str, Any]] = {
        "batch_size": 128,
        "base_lr": 0.06,
        "temperature": 0.1,
        "loss": "softmax",
        "nce_z": "every_step",
    }

    def validate(self) -> None:
        super().validate()
        if self.loss not in LOSSES:
            raise ConfigError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.nce_z not in Z_ESTIMATES:
            raise ConfigError(f"nce_z must be one of {', '.join(Z_ESTIMATES)}, got {self.nce_z!r}")


@register
class InstDisc(Method):
    name = "instdisc"
    paper = "Unsupervised Feature Learning via Non-Parametric Instance Discrimination (Wu et al., 2018)"
    arxiv = "1805.01978"
    config_cls = InstDiscConfig
    min_views = 1
    max_views = 1
    distributed = True  # every rank's features written to the bank (MemoryBank), log Z from the global batch

    def __init__(self, backbone: nn.Module, feature_dim: int, config: InstDiscConfig, num_samples: int):
        super().__init__(backbone, feature_dim, config, num_samples)
        self.head = nn.Linear(feature_dim, config.embedding_dim)  # the official fc to low_dim, then Normalize
        self.bank = MemoryBank(num_samples, config.embedding_dim)
        # log Z, set once from the first batch (official ``NCEAverage``: Z < 0 means not yet);
        # buffers, so a resumed run keeps the estimate instead of making a new one.
        self.register_buffer("log_z", torch.zeros(()))
        self.register_buffer("z_estimated", torch.zeros((), dtype=torch.bool))

    @classmethod
    def view_specs(cls, config: InstDiscConfig, image_size: int) -> list[ViewSpec]:
        return cls.preset_specs(config, image_size)[:1]  # one view per image, as the paper

    def embedding_network(self) -> nn.Module:
        """Images (N, 3, H, W) -> unit features (N, embedding_dim), the space of the bank."""
        return nn.Sequential(self.backbone, self.head, L2Normalize())

    def knn_bank(self) -> tuple[torch.Tensor, nn.Module]:
        return self.bank.features, self.embedding_network()

    def forward(self, batch: Batch) -> StepOutput:
        (x,) = batch.views
        cfg = self.config
        n = x.shape[0]
        f = F.normalize(self.head(self.backbone(x)).float(), dim=1)  # (N, D)
        positives = self.bank.features[batch.indices]  # (N, D): each image's own row, no gradient
        negatives = self.bank.negatives(n, cfg.num_negatives)  # (N, K, D), no gradient
        pos, neg = bank_logits(f, positives, negatives, cfg.temperature)
        stats = {}
        if cfg.loss == "softmax":
            loss = nce_softmax_loss(pos, neg)
        else:
            with torch.no_grad():  # this batch's estimate, over the global batch on several processes
                estimate = distributed.log_mean_exp_over_ranks(nce_log_z(pos, neg, self.num_samples))
            update_log_z(self.log_z, self.z_estimated, estimate, cfg.nce_z)
            loss = nce_loss(pos, neg, self.log_z, self.num_samples)
            with torch.no_grad():
                stats = nce_posteriors(pos, neg, self.log_z, self.num_samples)
                stats["log_z_drift"] = estimate - self.log_z
        # The bank update sits here rather than in after_step: the step's features are at hand
        # without keeping them outside the state_dict until after the optimiser step. They are
        # the features before the update, as the official code's (written in its backward pass);
        # the rows for this step's logits were gathered above, so the update does not change them.
        self.bank.update(batch.indices, f.detach(), cfg.bank_momentum)
        return StepOutput(loss=loss, stats=stats)

    def step_warning(self, stats: dict[str, float]) -> str | None:
        if stats.get("noise_h_sum", 0.0) <= NOISE_H_SUM_WARNING:
            return None
        return (
            f"the NCE noise term dominates: the {self.config.num_negatives} noise rows' posteriors sum to "
            f"{stats['noise_h_sum']:.1f} per image (log Z has drifted {stats['log_z_drift']:+.1f} from its "
            "first-batch estimate), so most of the gradient pushes every image the same way and the features "
            "may collapse; see the collapse guard's feature_cosine"
        )

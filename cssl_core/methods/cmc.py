"""CMC: Contrastive Multiview Coding, colour channels as views (Tian et al., arXiv 1906.05849;
official code HobbitLong/CMC, ``train_CMC.py``).

One augmented image per sample is converted to Lab on the device (Sec. 4.2: L and ab as two
views of an image). The L channel goes through one encoder and the ab channels through another
(two ResNets of half width, official ``ResNetV1``), each with a linear head to a unit 128-d
feature. Each view has a memory bank of one feature per training image; the L feature of an image
is contrasted against the ab bank (its own row the positive, K uniform draws the noise), and the ab
feature against the L bank (Sec. 3.1-3.3, Eq. 2 and 5: L(V1, V2) = L_{V1}^{V2} + L_{V2}^{V1}).
The official ResNets use the softmax over 1 + K (``--softmax``), AlexNet the NCE loss of
InstDisc with one normalising constant per direction (``NCEAverage``, ``NCECriterion``).
Evaluation features are both encoders' features concatenated (official ``LinearProbing.py``).

On images of 64 px or less the small-image recipe contrasts each view against the other view's
features in the same batch instead (``negatives=batch``; measured 48.5% kNN against 38.0% with the
banks in a 5-minute CIFAR-10 run, BENCHMARKS.md): in a short run a bank row is refreshed once an
epoch, so the banks hold stale features. ``recipe=paper`` or ``negatives=memory_bank`` keeps them.
An exported checkpoint is not a torchvision network: ``cssl export`` writes the state of the
evaluation encoder, :class:`RGBLabEncoder` (the two half-width encoders under
``encoders.encoder_l.*`` and ``encoders.encoder_ab.*``, and the ``input_mean`` / ``input_std`` it
uses to turn normalised RGB back into Lab); build that module from ``cssl_core.methods.cmc`` to load it.

Differences from the official code: each direction draws its own noise rows (the official code
draws one set of indices for both banks); Lab is computed from the float view on the device, not
from the resized uint8 image; the learning rate follows our cosine instead of the step decays at
epochs 120, 160 and 200 of 240.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from cssl_core import distributed
from cssl_core.augment import ViewSpec
from cssl_core.backbones import build_backbone, vit_names
from cssl_core.config import MethodConfig, option
from cssl_core.errors import ConfigError
from cssl_core.losses import Z_ESTIMATES, nce_log_z, nce_loss, nce_posteriors, nce_softmax_loss, update_log_z
from cssl_core.losses.precision import full_precision
from cssl_core.methods.base import Batch, Method, StepOutput
from cssl_core.methods.instdisc import NOISE_H_SUM_WARNING
from cssl_core.methods.memory_bank import MemoryBank, bank_logits
from cssl_core.registry import register

if TYPE_CHECKING:
    from cssl_core.config import PretrainConfig

LOSSES = ("softmax", "nce")
NEGATIVES = ("memory_bank", "batch")

# sRGB (D65) to CIE XYZ, and the D65 white point (the values of skimage's rgb2lab, which the
# official dataset.py ``RGB2Lab`` calls).
_RGB_TO_XYZ = ((0.412453, 0.357580, 0.180423), (0.212671, 0.715160, 0.072169), (0.019334, 0.119193, 0.950227))
_D65_WHITE = (0.95047, 1.0, 1.08883)
# Official train_CMC.py: Lab normalised to about [-1, 1] by the channels' ranges over sRGB.
LAB_MEAN = ((0 + 100) / 2, (-86.183 + 98.233) / 2, (-107.857 + 94.478) / 2)
LAB_STD = ((100 - 0) / 2, (86.183 + 98.233) / 2, (107.857 + 94.478) / 2)


@full_precision
def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """rgb: (N, 3, H, W) sRGB in [0, 1] -> CIE Lab (N, 3, H, W), float32: L in [0, 100], a and b
    in about [-108, 98]. sRGB gamma undone, D65 XYZ, Lab against the D65 white."""
    rgb = rgb.float()
    linear = torch.where(rgb > 0.04045, ((rgb.clamp(min=0.04045) + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    matrix = torch.tensor(_RGB_TO_XYZ, device=rgb.device) / torch.tensor(_D65_WHITE, device=rgb.device)[:, None]
    xyz = torch.einsum("ij,njhw->nihw", matrix, linear)  # X / Xn, Y / Yn, Z / Zn
    # f(t) = t^(1/3) above (6/29)^3, else the linear segment t / (3 (6/29)^2) + 4/29.
    delta = 6 / 29
    f = torch.where(xyz > delta**3, xyz.clamp(min=delta**3) ** (1 / 3), xyz / (3 * delta**2) + 4 / 29)
    fx, fy, fz = f.unbind(dim=1)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=1)


def normalized_lab(pixels: torch.Tensor) -> torch.Tensor:
    """Pixels (N, 3, H, W) in [0, 1] -> Lab normalised as the official code's encoders see it."""
    lab = rgb_to_lab(pixels.clamp(0, 1))
    mean, std = (torch.tensor(v, device=lab.device).view(1, 3, 1, 1) for v in (LAB_MEAN, LAB_STD))
    return (lab - mean) / std


@dataclass
class CMCConfig(MethodConfig):
    # Official train_CMC.py for ResNets (README: resnet50v1, batch 128): SGD with momentum 0.9,
    # lr 0.03 at batch 128, i.e. 0.06 at 256 by the linear scaling rule, weight decay 1e-4, no
    # warmup; --softmax, T = 0.07, K = 16384, bank momentum 0.5, 128-d features, crop (0.08, 1)
    # for ResNets on ImageNet, flip, and no colour augmentation.
    optimizer: str = "sgd"
    base_lr: float = 0.06
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.0
    augmentation: str = "mocov1"  # its crop and flip; no blur or solarisation
    crop_min_scale: float | None = 0.08
    colour_augmentation: bool = option(
        False,
        "keep the preset's colour jitter and grayscale (CMC's own pipeline "
        "is crop and flip only: a grayscale view has no ab to contrast)",
    )
    loss: str = option(
        "softmax",
        "softmax: cross-entropy over the positive and K noise logits (official ResNets); "
        "nce: InstDisc's NCE (official AlexNet)",
    )
    nce_z: str = option(
        "first_batch",
        "loss=nce's normalising constant Z per direction: first_batch, estimated once and kept (the "
        "official NCEAverage); every_step, each batch's mean exp(logit) x the bank size",
    )
    negatives: str = option(
        "memory_bank",
        "memory_bank: the other view's bank rows, the image's own as the "
        "positive; batch: the other view's features of the batch",
    )
    num_negatives: int = option(16384, "noise rows K drawn from the other view's memory bank per anchor", ge=1)
    temperature: float = option(0.07, "temperature T of the logits", gt=0)
    bank_momentum: float = option(0.5, "a bank row becomes normalize(m * row + (1 - m) * new feature)", ge=0, lt=1)
    head_dim: int = option(128, "dimension of each view's unit feature", ge=1)
    encoder_width: float = option(
        0.5, "width of each view's encoder (0.5: two half-width encoders, the parameters of one)", gt=0
    )

    # Reasoned, not measured: batch 128 at lr 0.03 (the official ResNet setting), T = 0.1 (the
    # official README's STL-10 value), crop (0.2, 1) (the official crop for AlexNet and
    # ImageNet-100; 0.08 of 32 px is a 9 px patch), and 4096 noise rows for 10k-50k images
    # (README: the released CMC weights used 4096), where 16384 draws would hit a third or more
    # of a 50k bank per anchor.
    # Measured (BENCHMARKS.md, CIFAR-10 in 5 minutes): in-batch negatives 48.5% kNN against 38.0%
    # with the memory banks, whose rows are a whole epoch old and are each refreshed only 6 times in
    # such a run (and whose noise draws cost 5x the images/s).
    # loss=nce re-estimates Z every step, as InstDisc's small-image recipe (see there): a Z fixed on the
    # first batch lets the noise term take over the gradient as the banks fill (tests/test_method_cmc.py).
    small_image_recipe: ClassVar[dict[str, Any]] = {
        "batch_size": 128,
        "temperature": 0.1,
        "crop_min_scale": 0.2,
        "num_negatives": 4096,
        "negatives": "batch",
        "nce_z": "every_step",
    }

    def validate(self) -> None:
        super().validate()
        if self.loss not in LOSSES:
            raise ConfigError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.negatives not in NEGATIVES:
            raise ConfigError(f"negatives must be one of {', '.join(NEGATIVES)}, got {self.negatives!r}")
        if self.nce_z not in Z_ESTIMATES:
            raise ConfigError(f"nce_z must be one of {', '.join(Z_ESTIMATES)}, got {self.nce_z!r}")


class LabEncoders(nn.Module):
    """Normalised Lab images (N, 3, H, W) -> features (N, dim_l + dim_ab): ``encoder_l`` sees the
    L channel only and ``encoder_ab`` the a and b channels only (official ``l_to_ab``, ``ab_to_l``)."""

    def __init__(self, encoder_l: nn.Module, dim_l: int, encoder_ab: nn.Module, dim_ab: int):
        super().__init__()
        self.encoder_l, self.encoder_ab = encoder_l, encoder_ab
        self.dim_l, self.dim_ab = dim_l, dim_ab

    def encode(self, lab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lightness, ab = lab.split([1, 2], dim=1)
        return self.encoder_l(lightness), self.encoder_ab(ab)

    def forward(self, lab: torch.Tensor) -> torch.Tensor:
        return torch.cat(self.encode(lab), dim=1)


class RGBLabEncoder(nn.Module):
    """Images normalised with ``mean`` and ``std`` (N, 3, H, W) -> both encoders' features of their
    Lab, concatenated (N, dim_l + dim_ab): the evaluation encoder."""

    def __init__(self, encoders: LabEncoders, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.encoders = encoders
        self.register_buffer("input_mean", mean.detach().clone().view(1, 3, 1, 1))
        self.register_buffer("input_std", std.detach().clone().view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoders(normalized_lab(images.float() * self.input_std + self.input_mean))


@full_precision
def batch_logits(anchors: torch.Tensor, others: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """anchors, others: (N, D) unit features of two views of N images -> the positive logits (N,)
    ``a_i . o_i / T`` and the noise logits (N, N - 1) ``a_i . o_j / T``, j != i, in float32.

    On several processes both are this rank's n images of the global batch's N: the others are
    gathered from every rank with gradients (as SimCLR's negatives), and the logits are this
    rank's anchors' rows, (n,) and (n, N - 1), of the one-process ones."""
    candidates = distributed.gather(others)  # (N, D), the one-process order
    sim = anchors.float() @ candidates.float().T / temperature  # (n, N), positives at column first + i
    n, total = sim.shape
    rows = torch.arange(n, device=sim.device)
    own = torch.zeros_like(sim, dtype=torch.bool)
    own[rows, distributed.rank() * n + rows] = True
    return sim[own], sim[~own].view(n, total - 1)


@register
class CMC(Method):
    name = "cmc"
    paper = "Contrastive Multiview Coding (Tian et al., 2019)"
    arxiv = "1906.05849"
    config_cls = CMCConfig
    min_views = 1
    max_views = 1
    # In-batch noise gathered across ranks with gradients; the banks take every rank's features
    # (MemoryBank); BN over the global batch.
    distributed = True

    def __init__(self, backbone: LabEncoders, feature_dim: int, config: CMCConfig, num_samples: int):
        super().__init__(backbone, feature_dim, config, num_samples)
        # Official: the ResNet's own fc to 128-d, then L2-normalised.
        self.head_l = nn.Linear(backbone.dim_l, config.head_dim)
        self.head_ab = nn.Linear(backbone.dim_ab, config.head_dim)
        if config.negatives == "memory_bank":
            self.bank_l = MemoryBank(num_samples, config.head_dim)
            self.bank_ab = MemoryBank(num_samples, config.head_dim)
        if config.loss == "nce":
            # log Z of each direction (L anchors, ab anchors), estimated once from the first batch as
            # the official NCEAverage (or from every batch, nce_z); buffers, so a resumed run keeps the estimate.
            self.register_buffer("log_z", torch.zeros(2))
            self.register_buffer("z_estimated", torch.zeros((), dtype=torch.bool))

    @classmethod
    def build_backbone(cls, config: PretrainConfig, image_size: int) -> tuple[LabEncoders, int]:
        mc = config.method_config
        encoder_l, dim_l = build_backbone(
            config.backbone, image_size, norm=mc.norm, in_channels=1, width=mc.encoder_width
        )
        encoder_ab, dim_ab = build_backbone(
            config.backbone, image_size, norm=mc.norm, in_channels=2, width=mc.encoder_width
        )
        return LabEncoders(encoder_l, dim_l, encoder_ab, dim_ab), dim_l + dim_ab

    @classmethod
    def view_specs(cls, config: CMCConfig, image_size: int) -> list[ViewSpec]:
        spec = cls.preset_specs(config, image_size)[0]  # one image per sample: its channels are the views
        if not config.colour_augmentation:
            spec = dataclasses.replace(spec, jitter_p=0.0, grayscale_p=0.0)
        return [spec]

    @classmethod
    def check_config(cls, config: PretrainConfig, image_size: int) -> None:
        if config.backbone in vit_names():
            raise ConfigError(
                f"cmc encodes 1- and 2-channel images, which ViTs ({', '.join(vit_names())}) do not "
                "take; use a ResNet or small"
            )
        super().check_config(config, image_size)

    def encoder_for_eval(self) -> nn.Module:
        return RGBLabEncoder(self.backbone, self.input_mean, self.input_std)

    def forward(self, batch: Batch) -> StepOutput:
        (x,) = batch.views
        cfg = self.config
        lab = normalized_lab(self.pixels(x))
        if x.is_contiguous(memory_format=torch.channels_last):
            lab = lab.contiguous(memory_format=torch.channels_last)  # the loop's format, kept for the convolutions
        h_l, h_ab = self.backbone.encode(lab)
        z_l = F.normalize(self.head_l(h_l).float(), dim=1)  # (N, D)
        z_ab = F.normalize(self.head_ab(h_ab).float(), dim=1)  # (N, D)
        if cfg.negatives == "memory_bank":
            n, idx = x.shape[0], batch.indices
            # L against the ab bank, ab against the L bank: the positive is the image's own row.
            logits_l = bank_logits(
                z_l, self.bank_ab.features[idx], self.bank_ab.negatives(n, cfg.num_negatives), cfg.temperature
            )
            logits_ab = bank_logits(
                z_ab, self.bank_l.features[idx], self.bank_l.negatives(n, cfg.num_negatives), cfg.temperature
            )
            # The step's features, before the optimiser step, as the official NCEAverage writes
            # them; the rows above were gathered (copied) first, so this step's logits keep the old ones.
            self.bank_l.update(idx, z_l.detach(), cfg.bank_momentum)
            self.bank_ab.update(idx, z_ab.detach(), cfg.bank_momentum)
        else:  # the noise: the other view's features of the batch's other images; gradients reach both sides
            logits_l = batch_logits(z_l, z_ab, cfg.temperature)
            logits_ab = batch_logits(z_ab, z_l, cfg.temperature)
        stats = {}
        if cfg.loss == "softmax":
            loss = nce_softmax_loss(*logits_l) + nce_softmax_loss(*logits_ab)
        else:
            # Each direction's Z, as InstDisc's (nce_z): from the first batch and kept, or from every
            # batch; over the global batch on several processes.
            with torch.no_grad():
                estimate = torch.stack([nce_log_z(*logits, self.num_samples) for logits in (logits_l, logits_ab)])
                estimate = distributed.log_mean_exp_over_ranks(estimate)
            update_log_z(self.log_z, self.z_estimated, estimate, cfg.nce_z)
            loss = nce_loss(*logits_l, self.log_z[0], self.num_samples) + nce_loss(
                *logits_ab, self.log_z[1], self.num_samples
            )
            with torch.no_grad():  # InstDisc's hazard, per direction: see cssl_core.methods.instdisc
                for name, logits, log_z, new in zip(("l", "ab"), (logits_l, logits_ab), self.log_z, estimate):
                    terms = nce_posteriors(*logits, log_z, self.num_samples)
                    stats |= {f"{key}_{name}": value for key, value in terms.items()}
                    stats[f"log_z_drift_{name}"] = new - log_z
        return StepOutput(loss=loss, stats=stats)

    def step_warning(self, stats: dict[str, float]) -> str | None:
        worst = max(stats.get("noise_h_sum_l", 0.0), stats.get("noise_h_sum_ab", 0.0))
        if worst <= NOISE_H_SUM_WARNING:
            return None
        return (
            f"the NCE noise term dominates: the noise rows' posteriors sum to {worst:.1f} per image in one "
            "direction, so most of the gradient pushes every image the same way and the features may collapse; "
            "loss=softmax avoids the fixed normalising constant"
        )

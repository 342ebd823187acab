"""InfoMin: MoCo v2 on views that share less information (Tian et al., "What Makes for Good
Views for Contrastive Learning?", arXiv 2005.10243).

The paper's ImageNet model (Sec. 5, "InfoMin Aug") is MoCo v2 (arXiv 2003.04297) with stronger
augmentation: RandAugment and SimCLR-strength colour jitter on top of MoCo v2's crops, blur and
grayscale (the ``infomin`` preset, :func:`cssl_core.augment.presets.infomin`), and a lower
temperature. Queue, momentum encoder and loss are MoCo v2's (:class:`MoCoV2`), unchanged.

Left out: the JigSaw branch (PIRL's, arXiv 1912.01991) that the released models also train
(PyContrast's ``--jigsaw``). It is a second contrastive task on shuffled 3x3 tiles, not part of
the views; without it this is the paper's "InfoMin Aug" on MoCo v2 alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from cssl_core.config import option
from cssl_core.methods.moco import MoCoV2, MoCoV2Config
from cssl_core.registry import register


@dataclass
class InfoMinConfig(MoCoV2Config):
    # PyContrast's InfoMin settings (options/base_options.py): MoCo queue K = 65536, m = 0.999,
    # MLP head, 128-d keys, T = 0.15, augmentation "D"; SGD lr 0.03 at batch 256, weight decay
    # 1e-4, cosine schedule; 200 epochs (800 for the paper's best, 73.0% linear on ImageNet).
    augmentation: str = "infomin"
    temperature: float = option(0.15, "InfoNCE temperature")

    # MoCo v2's recipe measured here (BENCHMARKS.md: queue 4096 for a small set, symmetric loss,
    # batch 128), reused with this augmentation: reasoned from MoCo v2's, not measured for InfoMin.
    small_image_recipe: ClassVar[dict[str, Any]] = dict(MoCoV2Config.small_image_recipe)


@register
class InfoMin(MoCoV2):
    name = "infomin"
    paper = "What Makes for Good Views for Contrastive Learning? (Tian et al., 2020)"
    arxiv = "2005.10243"
    config_cls = InfoMinConfig

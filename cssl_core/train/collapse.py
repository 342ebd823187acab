"""The collapse guard: how spread out the same training images lie in feature space as a run goes.

A collapsed network maps every image to (nearly) one point; its loss can still look fine (a
constant output minimises BYOL's or SimSiam's loss, and a memory bank that collapses with the
network keeps InstDisc's low), so the run measures its features directly, on a fixed probe of
training images, un-augmented, through the encoder its evaluations use:

- ``feature_std``: the standard deviation of the l2-normalised features per dimension, averaged
  over the dimensions. SimSiam's measure (arXiv 2011.10566, Sec. 4.1, Fig. 2): it goes to 0 when
  the features collapse and is about 1/sqrt(d) when they spread evenly over the sphere.
- ``feature_cosine``: the mean cosine similarity of two different probe images' features; 1 when
  every image maps to one direction. Random initialisation is already high for a convnet with
  ReLU features (about 0.96 for ``small``), so the warning's threshold sits close to 1.
"""

from __future__ import annotations

import torch
from torch import nn

from cssl_core.evaluation.features import extract_features

PROBE_IMAGES = 256
# A mean pairwise cosine from which a run says its features have collapsed.
COLLAPSED_COSINE = 0.99


def feature_spread(features: torch.Tensor) -> dict[str, float]:
    """``feature_std`` and ``feature_cosine`` of (N, D) features, N >= 2."""
    z = nn.functional.normalize(features.float(), dim=1)
    n = z.shape[0]
    gram = z @ z.T
    cosine = (gram.sum() - gram.diagonal().sum()) / (n * (n - 1))
    return {"feature_std": z.std(dim=0).mean().item(), "feature_cosine": cosine.item()}


class CollapseGuard:
    """Measures :func:`feature_spread` on the same ``PROBE_IMAGES`` training images each time,
    and words a warning the first time the features have collapsed."""

    def __init__(self, images: torch.Tensor, seed: int, mean: list[float], std: list[float], device: torch.device):
        # Its own generator: choosing the probe draws nothing from the training's random streams.
        generator = torch.Generator().manual_seed(seed)
        picked = torch.randperm(len(images), generator=generator)[:PROBE_IMAGES]
        self.images = images[picked.to(images.device)]
        self.mean, self.std, self.device = mean, std, device
        self.warned = False

    def measure(self, encoder: nn.Module) -> dict[str, float]:
        """The spread of ``encoder``'s features (fp32, eval mode; the caller restores train mode)."""
        features = extract_features(encoder, self.images, self.mean, self.std, self.device, precision="fp32")
        return feature_spread(features)

    def warning(self, spread: dict[str, float], step: int) -> str | None:
        """A message the first time ``spread`` says the features have collapsed, else None."""
        if self.warned or len(self.images) < 2 or spread["feature_cosine"] < COLLAPSED_COSINE:
            return None
        self.warned = True
        return (
            f"the features have collapsed at step {step}: {PROBE_IMAGES} training images lie in nearly one "
            f"direction (mean pairwise cosine {spread['feature_cosine']:.4f}, std per dimension "
            f"{spread['feature_std']:.4f}); kNN and linear accuracy will be near chance. Lower the learning rate, "
            "or check the method's recipe in BENCHMARKS.md"
        )

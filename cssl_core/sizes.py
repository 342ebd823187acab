"""The image side below which the core treats images as CIFAR-sized."""

SMALL_IMAGE_MAX_SIZE = 64
"""Images of this side or less are small: ResNets get the CIFAR stem, views the papers' CIFAR
augmentations (no blur, weaker colour jitter) and methods their small-image recipe."""

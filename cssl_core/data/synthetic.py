"""Generated images for tests: ten classes, each a coloured shape or pattern on noise.

Deterministic (fixed seeds), path-free and fast: 500 train and 200 test images of
32x32 by default in a few tens of milliseconds. Each class has its own shape and colour; position,
scale, colour and background are jittered per image and Gaussian noise is added, so a
random-weight convnet's kNN already beats chance while the task is not trivial.
"""

from __future__ import annotations

import numpy as np

from cssl_core.data.cache import DecodedDataset, SplitArrays

NATIVE_SIZE = 32
NUM_TRAIN = 500
NUM_TEST = 200

CLASSES = [
    "disk", "square", "ring", "cross", "horizontal_stripes",
    "vertical_stripes", "diagonal_stripes", "checkerboard", "triangle", "diamond",
]  # fmt: skip
COLOURS = np.array(
    [
        [230, 60, 60], [60, 200, 70], [70, 90, 230], [230, 210, 60], [210, 70, 210],
        [60, 210, 210], [240, 140, 40], [150, 90, 230], [240, 240, 240], [140, 200, 90],
    ],
    dtype=np.float32,
)  # fmt: skip


def generate(image_size: int = NATIVE_SIZE, num_train: int = NUM_TRAIN, num_test: int = NUM_TEST) -> DecodedDataset:
    return DecodedDataset(
        classes=list(CLASSES),
        train=_split(num_train, image_size, seed=0),
        test=_split(num_test, image_size, seed=1),
    )


def _split(n: int, size: int, seed: int) -> SplitArrays:
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % len(CLASSES)).astype(np.int64)
    grid = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    scale = rng.uniform(0.75, 1.15, size=(n, 1, 1)).astype(np.float32)
    u = (grid[None, None, :] - rng.uniform(-0.25, 0.25, size=(n, 1, 1))) / scale  # (n, 1, size)
    v = (grid[None, :, None] - rng.uniform(-0.25, 0.25, size=(n, 1, 1))) / scale  # (n, size, 1)
    u, v = np.broadcast_arrays(u.astype(np.float32), v.astype(np.float32))
    masks = np.empty((n, size, size), dtype=np.float32)
    for c in range(len(CLASSES)):
        rows = labels == c
        masks[rows] = _shape(c, u[rows], v[rows])

    foreground = (COLOURS[labels] + rng.uniform(-25, 25, size=(n, 3))).astype(np.float32)  # (n, 3)
    background = (rng.uniform(10, 70, size=(n, 1)) + rng.uniform(-10, 10, size=(n, 3))).astype(np.float32)
    m = masks[:, None]  # (n, 1, size, size)
    images = foreground[:, :, None, None] * m + background[:, :, None, None] * (1 - m)
    images += rng.standard_normal(size=images.shape, dtype=np.float32) * 12.0
    return SplitArrays(np.clip(images, 0, 255).round().astype(np.uint8), labels)


def _shape(c: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Mask (n, size, size) of class ``c``'s shape at coordinates ``u``, ``v`` in about [-1, 1]."""
    box = np.maximum(np.abs(u), np.abs(v))
    if c == 0:
        mask = np.hypot(u, v) < 0.5
    elif c == 1:
        mask = box < 0.45
    elif c == 2:
        mask = np.abs(np.hypot(u, v) - 0.45) < 0.15
    elif c == 3:
        mask = ((np.abs(u) < 0.15) | (np.abs(v) < 0.15)) & (box < 0.6)
    elif c == 4:
        mask = (np.sin(v * np.pi * 3) > 0) & (box < 0.7)
    elif c == 5:
        mask = (np.sin(u * np.pi * 3) > 0) & (box < 0.7)
    elif c == 6:
        mask = (np.sin((u + v) * np.pi * 2.5) > 0) & (box < 0.7)
    elif c == 7:
        mask = (np.sin(u * np.pi * 2) * np.sin(v * np.pi * 2) > 0) & (box < 0.7)
    elif c == 8:
        mask = (v > -0.5) & (v < 0.45) & (np.abs(u) < (v + 0.5) / 2)
    else:
        mask = np.abs(u) + np.abs(v) < 0.55
    return mask.astype(np.float32)

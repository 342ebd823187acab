"""scikit-learn's bundled handwritten digits (the UCI optdigits test set), offline.

1,797 grey 8x8 images with values 0..16 in 10 classes. They are scaled to 0..255,
upsampled bilinearly to ``image_size`` (32 by default) and repeated over three
channels, then split once, stratified with a fixed seed, into 1,497 train and 300 test
images. Every machine with scikit-learn has them, so this is the offline default.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from cssl_core.data.cache import DecodedDataset, SplitArrays

NATIVE_SIZE = 32
TEST_SIZE = 300
SPLIT_SEED = 0


def decode(image_size: int) -> DecodedDataset:
    from sklearn.datasets import load_digits  # importing scikit-learn costs half a second
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    grey = torch.from_numpy(digits.images).float().unsqueeze(1) * (255.0 / 16.0)  # (N, 1, 8, 8)
    grey = F.interpolate(grey, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = grey.round_().clamp_(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous().numpy()
    labels = digits.target.astype(np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=TEST_SIZE, stratify=labels, random_state=SPLIT_SEED
    )
    return DecodedDataset(
        classes=[str(d) for d in range(10)],
        train=SplitArrays(images[np.sort(train_idx)], labels[np.sort(train_idx)]),
        test=SplitArrays(images[np.sort(test_idx)], labels[np.sort(test_idx)]),
    )

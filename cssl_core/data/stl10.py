"""STL-10 (Coates, Ng & Lee, AISTATS 2011), 96x96 colour images, binary version.

``stl10_binary/`` holds ``train_X.bin`` (5,000 images), ``test_X.bin`` (8,000) and
``unlabeled_X.bin`` (100,000): raw uint8, each image 3x96x96 stored column-major
(channel, then column, then row), so ``reshape(N, 3, 96, 96)`` needs its last two axes
swapped. ``train_y.bin`` / ``test_y.bin`` hold one uint8 label per image, 1..10, which
become 0..9; ``class_names.txt`` names them one per line. The unlabeled split feeds
pretraining only.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from cssl_core.data.budget import check_decoded_bytes
from cssl_core.data.cache import DecodedDataset, SplitArrays
from cssl_core.data.imagefolder import resize_arrays
from cssl_core.errors import DataError

log = logging.getLogger(__name__)

FOLDER = "stl10_binary"
NATIVE_SIZE = 96
IMAGE_BYTES = 3 * NATIVE_SIZE * NATIVE_SIZE
FILES = ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin", "class_names.txt")


def locate(path: Path) -> Path:
    for candidate in (path, path / FOLDER):
        if (candidate / "train_X.bin").is_file():
            return candidate
    state = "unrecognised layout" if path.exists() else "no such file or folder"
    raise DataError(
        f"STL-10 not found at {path} ({state}): expected {path / FOLDER}/ holding {', '.join(FILES)} "
        f"and unlabeled_X.bin (the STL-10 binary version); or pass download=True to fetch it into {path}"
    )


def decode(source: Path, image_size: int) -> DecodedDataset:
    for name in FILES:
        if not (source / name).is_file():
            raise DataError(f"missing {source / name}: an STL-10 binary folder holds {', '.join(FILES)}")
    classes = [line.strip() for line in (source / "class_names.txt").read_text().splitlines() if line.strip()]
    binaries = [source / f"{split}_X.bin" for split in ("train", "test", "unlabeled")]
    check_decoded_bytes(sum(p.stat().st_size // IMAGE_BYTES for p in binaries if p.is_file()), image_size, source)
    train = _split(source, "train", len(classes), image_size)
    test = _split(source, "test", len(classes), image_size)
    unlabeled = None
    if (source / "unlabeled_X.bin").is_file():
        images = _images(source / "unlabeled_X.bin", image_size)
        unlabeled = SplitArrays(images, np.full(len(images), -1, dtype=np.int64))
    else:
        log.warning("no %s: pretraining on STL-10 uses the train split only", source / "unlabeled_X.bin")
    return DecodedDataset(classes=classes, train=train, test=test, unlabeled=unlabeled)


def download(root: Path) -> None:
    import torchvision.datasets  # only needed here; importing it costs a second

    try:
        root.mkdir(parents=True, exist_ok=True)
        torchvision.datasets.STL10(root=str(root), split="train+unlabeled", download=True)
    except Exception as exc:  # network and archive errors come in many types
        raise DataError(f"could not download STL-10 into {root}: {exc}; place the files there by hand") from exc


def _split(source: Path, split: str, num_classes: int, image_size: int) -> SplitArrays:
    images = _images(source / f"{split}_X.bin", image_size)
    labels = np.fromfile(source / f"{split}_y.bin", dtype=np.uint8).astype(np.int64) - 1
    if len(labels) != len(images):
        raise DataError(f"{source / f'{split}_y.bin'} holds {len(labels)} labels for {len(images)} images")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{source / f'{split}_y.bin'} holds labels outside 1..{num_classes}")
    return SplitArrays(images, labels)


def _images(path: Path, image_size: int, chunk: int = 4096) -> np.ndarray:
    size = path.stat().st_size
    if size == 0 or size % IMAGE_BYTES:
        raise DataError(f"{path} is {size} bytes, not a whole number of 3x96x96 images; download it again")
    raw = np.memmap(path, dtype=np.uint8, mode="r").reshape(-1, 3, NATIVE_SIZE, NATIVE_SIZE)
    out = np.empty((len(raw), 3, image_size, image_size), dtype=np.uint8)
    for start in range(0, len(raw), chunk):  # in chunks: the unlabeled file alone is 2.7 GB
        rows = np.ascontiguousarray(raw[start : start + chunk].transpose(0, 1, 3, 2))
        out[start : start + chunk] = resize_arrays(rows, image_size)
    return out

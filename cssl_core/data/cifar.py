"""CIFAR-10 and CIFAR-100 (Krizhevsky, 2009), 32x32 colour images.

The canonical "python version" (https://www.cs.toronto.edu/~kriz/cifar.html) is a
folder of pickled dicts: ``data`` is a uint8 array ``(N, 3072)`` holding each image as
its red, green then blue 32x32 planes in row-major order, so ``reshape(N, 3, 32, 32)``
gives channels-first images.

- ``cifar-10-batches-py/``: ``data_batch_1`` .. ``data_batch_5`` (10,000 images each),
  ``test_batch``; labels under ``labels``, class names under ``batches.meta``'s
  ``label_names``.
- ``cifar-100-python/``: ``train`` (50,000), ``test`` (10,000); the 100 fine labels
  under ``fine_labels``, their names under ``meta``'s ``fine_label_names``.

CIFAR-10 is also read from an image-folder tree or a ``.tar.gz`` of one
(see :mod:`cssl_core.data.imagefolder`). The canonical class names are in sorted order,
as an image folder's are, so labels agree between the layouts.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from cssl_core.data import imagefolder
from cssl_core.data.budget import check_decoded_bytes
from cssl_core.data.cache import DecodedDataset, SplitArrays
from cssl_core.errors import DataError

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR100_FOLDER = "cifar-100-python"
NATIVE_SIZE = 32


def locate_cifar10(path: Path) -> Path:
    for candidate in (path, path / CIFAR10_FOLDER):
        if (candidate / "data_batch_1").is_file():
            return candidate
    tree = imagefolder.find_tree(path)
    if tree is not None:
        return tree
    raise DataError(
        f"CIFAR-10 not found at {path} ({_state(path)}): expected {path / CIFAR10_FOLDER}/data_batch_1 .. "
        f"data_batch_5, test_batch and batches.meta (the CIFAR-10 python version), or an image folder "
        f"{path}/train/<class>/<image> and {path}/test/<class>/<image>, or a .tar.gz of one; "
        f"or pass download=True to fetch it into {path}"
    )


def decode_cifar10(source: Path, image_size: int) -> DecodedDataset:
    if not (source / "data_batch_1").is_file():
        return imagefolder.decode(source, image_size)
    meta = _unpickle(source / "batches.meta")
    classes = [_text(name) for name in _field(meta, "label_names", source / "batches.meta")]
    train = _batches(source, CIFAR10_TRAIN, "labels")
    test = _batches(source, ["test_batch"], "labels")
    return _resized(classes, train, test, image_size, source)


def download_cifar10(root: Path) -> None:
    _download("CIFAR10", root)


def locate_cifar100(path: Path) -> Path:
    for candidate in (path, path / CIFAR100_FOLDER):
        if (candidate / "train").is_file() and (candidate / "meta").is_file():
            return candidate
    raise DataError(
        f"CIFAR-100 not found at {path} ({_state(path)}): expected {path / CIFAR100_FOLDER}/train, test and meta "
        f"(the CIFAR-100 python version); or pass download=True to fetch it into {path}"
    )


def decode_cifar100(source: Path, image_size: int) -> DecodedDataset:
    meta = _unpickle(source / "meta")
    classes = [_text(name) for name in _field(meta, "fine_label_names", source / "meta")]
    train = _batches(source, ["train"], "fine_labels")
    test = _batches(source, ["test"], "fine_labels")
    return _resized(classes, train, test, image_size, source)


def download_cifar100(root: Path) -> None:
    _download("CIFAR100", root)


def _resized(classes: list[str], train: SplitArrays, test: SplitArrays, size: int, source: Path) -> DecodedDataset:
    """Both splits at ``size``, once their decoded size is checked against the limit in effect."""
    check_decoded_bytes(len(train.images) + len(test.images), size, source)
    return DecodedDataset(
        classes=classes,
        train=SplitArrays(imagefolder.resize_arrays(train.images, size), train.labels),
        test=SplitArrays(imagefolder.resize_arrays(test.images, size), test.labels),
    )


def _batches(folder: Path, names: list[str], label_key: str) -> SplitArrays:
    """The images at their native 32 x 32, and their labels."""
    images, labels = [], []
    for name in names:
        batch = _unpickle(folder / name)
        data = np.asarray(_field(batch, "data", folder / name), dtype=np.uint8)
        batch_labels = np.asarray(_field(batch, label_key, folder / name), dtype=np.int64)
        if data.ndim != 2 or data.shape[1] != 3 * NATIVE_SIZE * NATIVE_SIZE or len(data) != len(batch_labels):
            raise DataError(
                f"{folder / name} holds data of shape {data.shape} and {len(batch_labels)} labels; "
                f"expected (N, 3072) and N labels: is it a CIFAR python-version file?"
            )
        images.append(data.reshape(-1, 3, NATIVE_SIZE, NATIVE_SIZE))
        labels.append(batch_labels)
    stacked = np.ascontiguousarray(np.concatenate(images))
    return SplitArrays(stacked, np.concatenate(labels))


class _ArrayUnpickler(pickle.Unpickler):
    """Loads dicts of numpy arrays, lists and bytes; refuses anything else a pickle could run."""

    ALLOWED = {
        ("_codecs", "encode"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"missing {path}: the CIFAR python-version folder must hold it; download the dataset again")
    try:
        with open(path, "rb") as f:
            loaded = _ArrayUnpickler(f, encoding="bytes").load()
    except Exception as exc:  # pickle raises many types for a damaged file
        raise DataError(f"cannot read {path}: {exc}; the file is damaged or not a CIFAR pickle") from exc
    if not isinstance(loaded, dict):
        raise DataError(f"{path} does not hold a CIFAR dict; is it a CIFAR python-version file?")
    return loaded


def _field(batch: dict, key: str, path: Path):
    for k in (key.encode(), key):  # the original files were pickled by Python 2: bytes keys
        if k in batch:
            return batch[k]
    raise DataError(f"{path} has no {key!r} entry; is it a CIFAR python-version file?")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _state(path: Path) -> str:
    return "unrecognised layout" if path.exists() else "no such file or folder"


def _download(cls_name: str, root: Path) -> None:
    import torchvision.datasets  # only needed here; importing it costs a second

    dataset_cls = getattr(torchvision.datasets, cls_name)
    try:
        root.mkdir(parents=True, exist_ok=True)
        for train in (True, False):
            dataset_cls(root=str(root), train=train, download=True)
    except Exception as exc:  # network and archive errors come in many types
        raise DataError(f"could not download {cls_name} into {root}: {exc}; place the files there by hand") from exc

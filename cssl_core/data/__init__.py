"""Datasets by name, as uint8 image tensors with train and test splits.

``load_dataset(name, path)`` is the one way in: the API, the worker and the CLI resolve
dataset names through the registry below. A source module (``cifar``, ``stl10``,
``imagefolder``, ``digits``, ``synthetic``) finds its files and decodes them into
uint8 arrays; this module caches those on disk (:mod:`cssl_core.data.cache`) so later
loads skip the decode, and wraps them as tensors. Augmentation and float conversion
happen later, per batch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from cssl_core.data import cache, cifar, digits, imagefolder, shards, stl10, synthetic
from cssl_core.data.budget import check_cached_bytes, check_decoded_bytes, decoded_bytes_limit, memory_limit
from cssl_core.data.stream import (
    DATA_MODES,
    FileIndex,
    StreamedImages,
    build_index,
    default_workers,
)
from cssl_core.errors import ConfigError, DataError

__all__ = [
    "DATA_MODES",
    "FileIndex",
    "ImageDataset",
    "ImageSplit",
    "StreamedImages",
    "class_balanced_indices",
    "check_data_mode",
    "class_balanced_subset",
    "data_fingerprint",
    "dataset_has_labels",
    "dataset_names",
    "decoded_bytes_limit",
    "describe_datasets",
    "load_dataset",
    "load_eval_dataset",
    "locate_dataset",
    "open_dataset",
]

log = logging.getLogger(__name__)


@dataclass
class ImageSplit:
    images: torch.Tensor | StreamedImages  # uint8 (N, 3, H, W), contiguous; or decoded when read
    labels: torch.Tensor  # int64 (N,), -1 where unlabeled

    def __post_init__(self) -> None:
        if isinstance(self.images, StreamedImages):
            if self.labels.shape != (len(self.images),):
                raise ValueError(f"labels must be (N,) for N={len(self.images)}, got {tuple(self.labels.shape)}")
            return
        if self.images.dtype != torch.uint8 or self.images.dim() != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be uint8 (N, 3, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels must be int64 (N,) for N={self.images.shape[0]}, got {self.labels.dtype} "
                             f"{tuple(self.labels.shape)}")  # fmt: skip
        self.images = self.images.contiguous()

    def __len__(self) -> int:
        return self.labels.shape[0]

    def subset(self, indices) -> ImageSplit:
        """The images at ``indices`` (ints or a boolean mask), copied, in the order given."""
        index = torch.as_tensor(indices)
        if index.dtype == torch.bool:
            index = index.nonzero().squeeze(1)
        index = index.long().reshape(-1)
        return ImageSplit(self.images[index].contiguous(), self.labels[index].clone())


@dataclass
class ImageDataset:
    name: str
    classes: list[str]
    train: ImageSplit
    test: ImageSplit
    unlabeled: ImageSplit | None = None  # STL-10's unlabeled images

    @property
    def image_size(self) -> int:
        return self.train.images.shape[-1]

    @property
    def labelled(self) -> bool:
        """Whether it has the labelled train and test splits that kNN and the probes need."""
        return len(self.train) > 0 and len(self.test) > 0

    def require_labels(self, purpose: str) -> None:
        if not self.labelled:
            raise DataError(
                f"{self.name} has no labels (no train/<class>/ and test/<class>/ folders), so {purpose} needs a "
                f"labelled data set: name one for the evaluations (eval_dataset / eval_data in a pretraining "
                f"config, --dataset / --data for cssl eval)"
            )

    def in_memory(self) -> ImageDataset:
        """This data set with every split decoded, checked against the decoded-bytes limit as a
        whole (itself when nothing is streamed)."""
        splits = [self.train, self.test, self.unlabeled]
        streamed = [s is not None and isinstance(s.images, StreamedImages) for s in splits]
        if not any(streamed):
            return self
        count = sum(len(s) for s, lazy in zip(splits, streamed, strict=True) if lazy)
        check_decoded_bytes(count, self.image_size, f"the evaluation set {self.name}")
        train, test, unlabeled = (
            ImageSplit(s.images.decode(), s.labels) if lazy else s for s, lazy in zip(splits, streamed, strict=True)
        )
        return ImageDataset(self.name, self.classes, train, test, unlabeled)

    def pretrain_split(self) -> ImageSplit:
        """The images self-supervised pretraining sees: train, plus unlabeled when present."""
        if self.unlabeled is None:
            return self.train
        return ImageSplit(
            torch.cat([self.train.images, self.unlabeled.images]),
            torch.cat([self.train.labels, self.unlabeled.labels]),
        )


def _no_decode(located: Path | str, size: int) -> cache.DecodedDataset:
    raise ConfigError(
        f"WebDataset shards ({located}) are streamed, not decoded into memory: use data_mode auto or stream"
    )


def _build_index(source: DatasetSource, located: Path | str, cache_root: Path) -> FileIndex:
    return shards.build_index(located, cache_root) if source.streamed_only else build_index(located, cache_root)


@dataclass(frozen=True)
class DatasetSource:
    name: str
    description: str
    image_size: int  # default side of the square images
    decode: Callable[[Path | None, int], cache.DecodedDataset]  # (located source, image size)
    locate: Callable[[Path | str], Path | str] | None = None  # a user path or URL -> the files; None: needs none
    download: Callable[[Path], None] | None = None
    cached: bool = True
    resizable: bool = False  # images of any size, brought to the run's image_size
    streamed_only: bool = False  # never decoded into memory: read by byte range (WebDataset shards)

    @property
    def needs_path(self) -> bool:
        return self.locate is not None


_SOURCES = {
    source.name: source
    for source in [
        DatasetSource(
            "cifar10",
            "CIFAR-10: 32x32 colour images, 10 classes, 50,000 train / 10,000 test. Path: the "
            "cifar-10-batches-py folder, an image folder train/<class>/, test/<class>/, or a .tar.gz of one",
            cifar.NATIVE_SIZE, cifar.decode_cifar10, cifar.locate_cifar10, cifar.download_cifar10,
        ),
        DatasetSource(
            "cifar100",
            "CIFAR-100: 32x32 colour images, 100 fine classes, 50,000 train / 10,000 test. "
            "Path: the cifar-100-python folder",
            cifar.NATIVE_SIZE, cifar.decode_cifar100, cifar.locate_cifar100, cifar.download_cifar100,
        ),
        DatasetSource(
            "stl10",
            "STL-10: 96x96 colour images, 10 classes, 5,000 train / 8,000 test, plus 100,000 unlabeled "
            "used for pretraining. Path: the stl10_binary folder",
            stl10.NATIVE_SIZE, stl10.decode, stl10.locate, stl10.download,
        ),
        DatasetSource(
            "imagefolder",
            "Your own images: a folder train/<class>/<image>, test/<class>/<image>; or, for pretraining "
            "only, a folder of unlabelled images at any depth or a .txt list of them; or a .tar.gz of either; "
            "resized (short side) and centre-cropped to image_size (default 64)",
            64, imagefolder.decode, imagefolder.locate, resizable=True,
        ),
        DatasetSource(
            "webdataset",
            "WebDataset tar shards (cssl data shard writes them from an image folder): a folder or an "
            "fsspec URL (s3://bucket/prefix) holding cssl-shards.json or train-*.tar (and test-*.tar for "
            "labels); always streamed, at image_size (default 64)",
            64, _no_decode, shards.locate, resizable=True, cached=False, streamed_only=True,
        ),
        DatasetSource(
            "digits",
            "scikit-learn's 8x8 handwritten digits as 32x32 RGB, 10 classes, 1,497 train / 300 test; "
            "bundled, works offline",
            digits.NATIVE_SIZE, lambda _, size: digits.decode(size),
        ),
        DatasetSource(
            "synthetic",
            "Generated coloured shapes, 10 classes, 500 train / 200 test at 32x32; for tests",
            synthetic.NATIVE_SIZE, lambda _, size: synthetic.generate(size), cached=False,
        ),
    ]
}  # fmt: skip


def dataset_names() -> list[str]:
    return list(_SOURCES)


def dataset_image_size(name: str, image_size: int | None = None) -> int:
    """The side of the square images ``load_dataset(name, image_size=image_size)`` gives: a
    data set of images of any size (``imagefolder``) takes ``image_size``, one of a fixed size
    refuses another; an unknown name lists the known ones."""
    if name not in _SOURCES:
        raise ConfigError(f"unknown dataset {name!r}; known datasets: {', '.join(dataset_names())}")
    source = _SOURCES[name]
    if image_size is None or image_size == source.image_size:
        return source.image_size
    if not source.resizable:
        resizable = ", ".join(s.name for s in _SOURCES.values() if s.resizable)
        raise ConfigError(
            f"{name} images are {source.image_size} px; image_size {image_size} applies to data sets of "
            f"images of any size ({resizable}): leave it unset for {name}"
        )
    return image_size


def dataset_has_labels(name: str, located: Path) -> bool:
    """Whether the files :func:`locate_dataset` found hold labels (an image folder may be a
    folder of unlabelled images); built-in data sets always do."""
    source = _SOURCES[name]
    if source.streamed_only:
        return shards.has_labels(located)
    return imagefolder.has_labels(located) if source.resizable else True


def describe_datasets() -> list[dict]:
    """One entry per dataset for ``cssl datasets`` and ``GET /v1/datasets``."""
    return [
        {
            "name": s.name,
            "description": s.description,
            "needs_path": s.needs_path,
            "image_size": s.image_size,
            "resizable": s.resizable,
        }
        for s in _SOURCES.values()
    ]


def locate_dataset(name: str, path: str | os.PathLike) -> Path | str:
    """The files of dataset ``name`` at ``path`` (its folder or archive), without reading them;
    :class:`DataError` when they are not there or not laid out as the dataset expects."""
    source = _SOURCES.get(name)
    if source is None:
        raise ConfigError(f"unknown dataset {name!r}; known datasets: {', '.join(_SOURCES)}")
    if not source.needs_path:
        raise ConfigError(f"dataset {name} takes no files")
    return source.locate(_user_path(source, path))


def load_dataset(
    name: str,
    path: str | os.PathLike | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    download: bool = False,
    image_size: int | None = None,
) -> ImageDataset:
    """Load a dataset by name, decoding it once and reusing the cached arrays afterwards.

    ``path`` is the dataset's folder or archive (see :func:`describe_datasets`); without
    one, a dataset that needs files is looked for where ``download=True`` puts it,
    ``<cache_dir>/downloads/<name>``. ``cache_dir`` defaults to ``$CSSL_CACHE_DIR`` or
    ``~/.cache/cssl``. ``image_size`` resizes to that square side (default: the
    dataset's own, 64 for ``imagefolder``).
    """
    source = _SOURCES.get(name)
    if source is None:
        raise ConfigError(f"unknown dataset {name!r}; known datasets: {', '.join(_SOURCES)}")
    size = source.image_size if image_size is None else image_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ConfigError(f"image_size must be a positive integer, got {image_size!r}")
    cache_root = Path(cache_dir).expanduser() if cache_dir is not None else cache.default_cache_dir()

    located = None
    if source.needs_path:
        located = _locate(source, path, cache_root, download)
    elif path is not None:
        log.warning("dataset %s takes no path; ignoring %s", name, path)

    if not source.cached:
        return _to_dataset(name, source.decode(None, size))
    entry = cache.cache_file(cache_root, name, located, size)
    if entry.is_file():
        check_cached_bytes(entry.stat().st_size, located)
    decoded = cache.load(entry)
    if decoded is None:
        start = time.perf_counter()
        decoded = source.decode(located, size)
        log.info("decoded %s from %s in %.1f s; caching at %s", name, located, time.perf_counter() - start, entry)
        cache.save(entry, decoded)
    return _to_dataset(name, decoded)


def check_data_mode(name: str, data_mode: str) -> None:
    """:class:`ConfigError` unless ``data_mode`` is one of :data:`DATA_MODES` that data set
    ``name`` takes: ``stream`` reads image folders only."""
    if data_mode not in DATA_MODES:
        raise ConfigError(f"data_mode must be one of {', '.join(DATA_MODES)}, got {data_mode!r}")
    source = _SOURCES.get(name)
    if source is None:
        raise ConfigError(f"unknown dataset {name!r}; known datasets: {', '.join(_SOURCES)}")
    if data_mode == "memory" and source.streamed_only:
        raise ConfigError(f"{name} data sets are streamed, never decoded into memory: use data_mode auto or stream")
    if data_mode == "stream" and not source.resizable:
        resizable = ", ".join(s.name for s in _SOURCES.values() if s.resizable)
        raise ConfigError(
            f"data_mode stream reads folders of images of any size ({resizable}); {name} is a built-in data "
            f"set of {source.image_size} px images, small enough to decode: use data_mode memory or auto"
        )


def open_dataset(
    name: str,
    path: str | os.PathLike | None = None,
    *,
    data_mode: str = "auto",
    cache_dir: str | os.PathLike | None = None,
    image_size: int | None = None,
) -> ImageDataset | FileIndex:
    """A pretraining data set: decoded in memory (:func:`load_dataset`) or, for an image folder,
    its :class:`FileIndex` to stream from (:mod:`cssl_core.data.stream`).

    ``data_mode`` ``memory`` or ``stream`` chooses; ``auto`` streams an image folder whose images
    at ``image_size`` would take more than :func:`memory_limit` decoded. Built-in data sets of
    fixed-size images are always in memory; ``stream`` refuses them."""
    check_data_mode(name, data_mode)
    source = _SOURCES[name]
    size = dataset_image_size(name, image_size)
    if data_mode == "memory" or not source.resizable:
        return load_dataset(name, path, cache_dir=cache_dir, image_size=image_size)
    cache_root = Path(cache_dir).expanduser() if cache_dir is not None else cache.default_cache_dir()
    located = _locate(source, path, cache_root, download=False)
    if source.streamed_only:
        return _build_index(source, located, cache_root)
    if data_mode == "auto" and located.is_file() and not imagefolder.is_image_list(located):
        return load_dataset(name, path, cache_dir=cache_dir, image_size=image_size)  # an archive
    index = build_index(located, cache_root)
    if data_mode == "auto":
        need = (len(index) + len(index.test_paths)) * size * size * 3
        limit, setting = memory_limit()
        if need <= limit:
            return load_dataset(name, path, cache_dir=cache_dir, image_size=image_size)
        log.info("%s: %s bytes decoded, over %s (%s): streaming", located, f"{need:,}", f"{limit:,}", setting)
    return index


def load_eval_dataset(
    name: str,
    path: str | os.PathLike | None = None,
    *,
    image_size: int,
    streamed: bool,
    cache_dir: str | os.PathLike | None = None,
    workers: int | None = None,
) -> ImageDataset:
    """The labelled data set that evaluates a run trained at ``image_size``.

    For a ``streamed`` run an image folder's images are brought to ``image_size`` the standard
    way (short side to ``image_size * 256 / 224``, centre crop: :func:`stream.eval_image`) by
    ``workers`` loader processes: decoded in memory when they fit :func:`memory_limit`, else as
    :class:`StreamedImages`, decoded again each time they are read (frozen-feature protocols
    read them once; :meth:`ImageDataset.in_memory` decodes them, limit checked, for the others). An
    in-memory run's, and built-in data sets, are :func:`load_dataset`'s (cached) images."""
    source = _SOURCES.get(name)
    if source is None:
        raise ConfigError(f"unknown dataset {name!r}; known datasets: {', '.join(_SOURCES)}")
    cache_root = Path(cache_dir).expanduser() if cache_dir is not None else cache.default_cache_dir()
    located = _locate(source, path, cache_root, download=False) if source.resizable else None
    streamed = streamed or source.streamed_only
    if located is None or not streamed or (_is_local_file(located) and not imagefolder.is_image_list(located)):
        return load_dataset(name, path, cache_dir=cache_dir, image_size=image_size)
    index = _build_index(source, located, cache_root)
    if not index.labelled:  # require_labels says what to name instead
        empty = ImageSplit(
            torch.empty(0, 3, image_size, image_size, dtype=torch.uint8), torch.empty(0, dtype=torch.int64)
        )
        return ImageDataset(name, [], empty, empty)
    workers = default_workers() if workers is None else workers
    need = (len(index) + len(index.test_paths)) * image_size * image_size * 3
    limit, setting = memory_limit()
    lazy = need > limit
    if lazy:
        log.info("%s: %s bytes decoded, over %s (%s): evaluated streamed", located, f"{need:,}", f"{limit:,}", setting)

    def split(paths: list[str], labels: torch.Tensor) -> ImageSplit:
        images = StreamedImages(index.reader, paths, image_size, workers)  # within the limit unless lazy
        return ImageSplit(images if lazy else images.decode(), labels)

    return ImageDataset(
        name, index.classes, split(index.paths, index.labels), split(index.test_paths, index.test_labels)
    )


def data_fingerprint(
    name: str,
    path: str | os.PathLike | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    image_size: int | None = None,
) -> dict:
    """What identifies the data ``load_dataset(name, path, ...)`` reads, without reading it.

    For a data set of files: a sha256 of its file index (:func:`cache.index_digest`, the index
    its cache entry is named by), with the number of files and their bytes; ``fingerprint`` is
    None when the files are not there. For a built-in one: a sha256 of its name, image size and
    the cache format. ``image_size`` is None where the run's size is not known here (images of
    any size, resized by the run)."""
    source = _SOURCES.get(name)
    if source is None:
        raise ConfigError(f"unknown dataset {name!r}; known datasets: {', '.join(_SOURCES)}")
    size = image_size if image_size is not None or source.resizable else source.image_size
    out = {"dataset": name, "path": None if path is None else str(path), "image_size": size}
    if not source.needs_path:
        key = {"dataset": name, "image_size": size, "format": cache.CACHE_FORMAT}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
        return {**out, "fingerprint": digest, "files": None, "bytes": None}
    cache_root = Path(cache_dir).expanduser() if cache_dir is not None else cache.default_cache_dir()
    try:
        located = _locate(source, path, cache_root, download=False)
    except DataError:
        return {**out, "fingerprint": None, "files": None, "bytes": None}
    if source.streamed_only:
        index = shards.build_index(located, cache_root)
        entries = "\n".join([*index.paths, *index.test_paths])
        digest = hashlib.sha256(entries.encode()).hexdigest()
        nbytes = sum(int(e.split("\t")[2]) for e in [*index.paths, *index.test_paths])
        return {**out, "fingerprint": digest, "files": len(index) + len(index.test_paths), "bytes": nbytes}
    digest, files, nbytes = cache.index_digest(located.resolve())
    return {**out, "fingerprint": digest, "files": files, "bytes": nbytes}


def class_balanced_subset(split: ImageSplit, n: int, seed: int) -> ImageSplit:
    """A fixed, seeded subset of ``n`` images with ``n // num_classes`` from each class.

    The ``n % num_classes`` leftover places go one each to classes picked by the seed; a
    class with too few images gives its shortfall to the others. Unlabeled images (-1,
    STL-10's pretraining split) count as one more class. Images keep their order in
    ``split``; the same ``(split, n, seed)`` always gives the same subset.
    """
    return split.subset(class_balanced_indices(split.labels, n, seed))


def class_balanced_indices(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """The sorted indices into ``labels`` of :func:`class_balanced_subset`."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"subset size must be a positive integer, got {n!r}")
    if n > len(labels):
        raise DataError(f"cannot take a subset of {n} images from a split of {len(labels)}; lower the subset size")
    generator = torch.Generator().manual_seed(seed)
    classes = labels.unique()
    quota = torch.full((len(classes),), n // len(classes), dtype=torch.long)
    quota[torch.randperm(len(classes), generator=generator)[: n % len(classes)]] += 1

    chosen, spare = [], []
    for c, take in zip(classes.tolist(), quota.tolist()):
        members = (labels == c).nonzero().squeeze(1)
        members = members[torch.randperm(len(members), generator=generator)]
        chosen.append(members[:take])
        spare.append(members[take:])
    picked = torch.cat(chosen)
    if len(picked) < n:  # some classes were short: fill from the rest, in seeded order
        rest = torch.cat(spare)
        picked = torch.cat([picked, rest[torch.randperm(len(rest), generator=generator)[: n - len(picked)]]])
    return picked.sort().values


def _is_local_file(located: Path | str) -> bool:
    return isinstance(located, Path) and located.is_file()


def _user_path(source: DatasetSource, path: str | os.PathLike) -> Path | str:
    """``path`` as its source reads it: a URL (``s3://...``) as given, for WebDataset shards only."""
    if shards.is_url(path):
        if not source.streamed_only:
            raise DataError(
                f"dataset {source.name} reads local files, not {path}: write the images as WebDataset shards "
                f"(cssl data shard SRC {path}) and name dataset webdataset"
            )
        return str(path)
    return Path(path).expanduser()


def _locate(source: DatasetSource, path: str | os.PathLike | None, cache_root: Path, download: bool) -> Path | str:
    root = _user_path(source, path) if path is not None else cache_root / "downloads" / source.name
    if download:
        if source.download is None:
            raise ConfigError(f"dataset {source.name} cannot be downloaded; pass the path of your files")
        try:
            return source.locate(root)
        except DataError:
            log.info("downloading %s into %s", source.name, root)
            source.download(root)
    elif path is None:
        try:
            return source.locate(root)
        except DataError:
            fetch = f", or download=True to fetch it into {root}" if source.download else ""
            raise DataError(
                f"dataset {source.name} needs a path: pass the folder or archive that holds it{fetch}. "
                f"{source.description}"
            ) from None
    return source.locate(root)


def _to_dataset(name: str, decoded: cache.DecodedDataset) -> ImageDataset:
    def split(arrays: cache.SplitArrays) -> ImageSplit:
        return ImageSplit(torch.from_numpy(arrays.images), torch.from_numpy(arrays.labels))

    unlabeled = split(decoded.unlabeled) if decoded.unlabeled is not None else None
    return ImageDataset(name, list(decoded.classes), split(decoded.train), split(decoded.test), unlabeled)

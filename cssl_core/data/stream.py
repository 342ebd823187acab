"""Image folders too big for memory: a file index, and batches decoded per step.

An image folder (:mod:`.imagefolder`'s layouts, not archives) is read as a :class:`FileIndex`:
its image paths and labels (or, for WebDataset tar shards, :mod:`.shards`' byte ranges, read by the
index's ``reader``), built by one walk of the tree and cached under
``<cache_dir>/index/`` (keyed by the folder and the mtimes of its top folders, so a second run
does not walk 1.28 M files again). Training reads batch ``k`` of an epoch through
:class:`StreamBatches`, a ``torch.utils.data.Dataset`` whose item ``k`` is that batch: its
``DataLoader`` worker processes decode the files and make each view's random resized crop and
flip at the image's own resolution, drawing from a generator seeded by (seed, epoch, k). So the
crops do not depend on how many workers there are or on which one makes a batch, and a run
resumed at step k starts its loader at batch k. The other stages (jitter, blur, ...) run on the
batch of crops in the training process (:meth:`ViewGenerator.finish`), from its checkpointed
generator, as the in-memory path does.

Where the images are decoded and cropped (:data:`DECODE_PLACES`, :func:`decode_place`): in the
loader processes on the CPU, as above, or, when training on a GPU, on the training device: the
loader processes then only read the files, and pass a batch's JPEGs as their bytes
(:class:`EncodedImages`); the training process decodes them in one ``decode_jpeg`` call (nvjpeg
on CUDA) and crops them on the device with the same draws from the same generator (a core decodes
about 1,200 ImageNet-sized JPEGs a second: in the loader, a GPU run would take a core for every
1,200 images a second). Other formats, and JPEGs nvjpeg cannot read (CMYK), are decoded on the CPU
as in the loader.

Evaluations see images the standard way (:func:`eval_image`): the short side resized to
``size * 256 / 224``, then the centre ``size`` x ``size``.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import io
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.io import ImageReadMode, decode_image, decode_jpeg

from cssl_core.augment import ViewSpec, ops, sample_crop_flip
from cssl_core.data import imagefolder
from cssl_core.errors import ConfigError, DataError

log = logging.getLogger(__name__)

DATA_MODES = ("auto", "memory", "stream")
# Bump when the index's contents change, so old cached indices are not reused.
INDEX_FORMAT = 1
# Where a streamed batch is decoded and cropped: auto is the device when training on CUDA.
DECODE_PLACES = ("auto", "loader", "device")
# Formats torchvision's decoder reads (the fastest here); others go through Pillow.
_TORCHVISION_FORMATS = (".jpg", ".jpeg", ".png")
# glibc's mallopt parameter number of the mmap threshold (malloc.h).
_M_MMAP_THRESHOLD = -3
_JPEG_SUFFIXES = (".jpg", ".jpeg")
# Start-of-frame markers (SOF0 to SOF15 less DHT, JPG and DAC): the frame header names the components.
_START_OF_FRAME = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


class FolderReader:
    """The encoded bytes of an image file, by its path relative to ``root``."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def __call__(self, entry: str) -> bytes:
        try:
            return imagefolder._read_no_links(self.root / entry)
        except OSError as exc:
            raise DataError(
                f"cannot read image {self.root / entry}: {exc}; the folder changed since it was indexed?"
            ) from exc


@dataclass
class FileIndex:
    """The images of a folder, for streaming: ``paths`` relative to ``root``, ``labels`` int64
    (N,) (-1 where unlabelled), and the held-out ``test`` images of a labelled tree.

    ``reader`` maps an entry of ``paths`` to the image's encoded bytes: a :class:`FolderReader`
    of ``root`` unless given (WebDataset shards: :class:`cssl_core.data.shards.ShardReader`, whose
    entries are byte ranges of the shards at ``root``, a folder or an fsspec URL)."""

    root: Path | str
    classes: list[str]
    paths: list[str]
    labels: torch.Tensor
    test_paths: list[str]
    test_labels: torch.Tensor
    reader: Callable[[str], bytes] | None = None

    def __post_init__(self) -> None:
        if self.reader is None:
            self.reader = FolderReader(self.root)

    def __len__(self) -> int:
        return len(self.paths)

    @functools.cached_property
    def packed_paths(self) -> np.ndarray:
        """``paths`` as one bytes array: loader processes read it without touching a Python object
        per file, so the pages that fork shared with them stay shared (a list of 1.28 M strings
        would be copied into each, as reading a string updates its reference count)."""
        return np.array([p.encode() for p in self.paths])

    @property
    def labelled(self) -> bool:
        return bool(self.classes) and len(self.test_paths) > 0

    def subset(self, indices: torch.Tensor) -> FileIndex:
        """The training images at ``indices``, in that order; the test images unchanged."""
        keep = indices.tolist()
        return FileIndex(
            self.root,
            self.classes,
            [self.paths[i] for i in keep],
            self.labels[indices],
            self.test_paths,
            self.test_labels,
            self.reader,
        )


def build_index(source: Path, cache_dir: Path) -> FileIndex:
    """The :class:`FileIndex` of a located image folder or ``.txt`` list, from the cache when the
    folder looks unchanged (the same mtimes of the folder and its folders two levels down: a file
    added or removed in a class folder changes its mtime); otherwise walked and cached."""
    if source.is_file() and not imagefolder.is_image_list(source):
        raise ConfigError(
            f"data_mode stream reads a folder of images or a .txt list, not an archive ({source}): extract it "
            f"and pass the folder, or use data_mode memory"
        )
    entry = _index_file(cache_dir, source.resolve())
    if entry.is_file():
        try:
            return _from_json(json.loads(entry.read_text()), source)
        except (OSError, ValueError, KeyError) as exc:
            log.warning("ignoring unreadable file index %s (%s); walking %s again", entry, exc, source)
    index = _walk(source)
    _save(entry, index)
    return index


def _index_file(cache_dir: Path, source: Path) -> Path:
    stamps = []
    if source.is_dir():
        for first in sorted(os.scandir(source), key=lambda e: e.name):
            if first.is_dir(follow_symlinks=False):
                stamps.append((first.name, first.stat().st_mtime_ns))
                for second in sorted(os.scandir(first.path), key=lambda e: e.name):
                    if second.is_dir(follow_symlinks=False):
                        stamps.append((f"{first.name}/{second.name}", second.stat().st_mtime_ns))
    key = {"format": INDEX_FORMAT, "source": str(source), "mtime": source.stat().st_mtime_ns, "folders": stamps}
    digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:20]
    return Path(cache_dir) / "index" / f"{source.name}-{digest}.json"


def _walk(source: Path) -> FileIndex:
    empty = torch.empty(0, dtype=torch.int64)
    if imagefolder.is_image_list(source):
        paths = imagefolder._read_list(source)
        return FileIndex(source.parent, [], paths, torch.full((len(paths),), -1), [], empty)
    if not imagefolder.has_labels(source):
        paths = sorted(p for p in imagefolder._walk_all(source) if imagefolder._is_image(p))
        if not paths:
            raise DataError(f"no images in {source}")
        return FileIndex(source, [], paths, torch.full((len(paths),), -1), [], empty)
    files, dirs = imagefolder._walk(source)
    classes, items = imagefolder.split_items(files, dirs, f"{source}/")
    split = {name: ([f for f, _ in pairs], torch.tensor([c for _, c in pairs], dtype=torch.int64))
             for name, pairs in items.items()}  # fmt: skip
    return FileIndex(source, classes, *split["train"], *split["test"])


def _save(entry: Path, index: FileIndex) -> None:
    body = {
        "format": INDEX_FORMAT,
        "classes": index.classes,
        "paths": index.paths,
        "labels": index.labels.tolist(),
        "test_paths": index.test_paths,
        "test_labels": index.test_labels.tolist(),
    }
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=entry.parent, suffix=".tmp", delete=False) as f:
            json.dump(body, f)
        os.chmod(f.name, 0o644)
        os.replace(f.name, entry)
    except OSError as exc:
        log.warning("could not write file index %s (%s); the next run walks the folder again", entry, exc)


def _from_json(body: dict, source: Path) -> FileIndex:
    if body["format"] != INDEX_FORMAT:
        raise ValueError(f"format {body['format']}")
    root = source.parent if source.is_file() else source
    labels, test_labels = (torch.tensor(body[k], dtype=torch.int64) for k in ("labels", "test_labels"))
    return FileIndex(root, body["classes"], body["paths"], labels, body["test_paths"], test_labels)


def read_image(path: Path) -> torch.Tensor:
    """A file as uint8 RGB (3, H, W) at its own resolution (:func:`decode_bytes`)."""
    return decode_bytes(FolderReader(path.parent)(path.name), str(path))


def decode_bytes(data: bytes, name: str) -> torch.Tensor:
    """An encoded image as uint8 RGB (3, H, W) at its own resolution: torchvision's decoder for
    JPEG and PNG (by ``name``'s suffix), Pillow for the other formats and for files torchvision's
    decoder refuses."""
    if os.path.splitext(name)[1].lower() in _TORCHVISION_FORMATS:
        try:
            return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        except RuntimeError:
            pass  # e.g. a CMYK JPEG: Pillow reads it
    try:
        with Image.open(io.BytesIO(data)) as image:
            return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).contiguous()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot decode image {name}: {exc}; replace or remove the file") from exc


def jpeg_components(data: bytes) -> int | None:
    """The number of components in a JPEG's frame header (1 grey, 3 YCbCr, 4 CMYK or YCCK), read
    without decoding; None when ``data`` is not a JPEG or ends before its frame header."""
    if data[:2] != b"\xff\xd8":
        return None
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF or marker == 0x01 or 0xD0 <= marker <= 0xD7:  # fill byte, markers without a length
            at += 1 if marker == 0xFF else 2
            continue
        if marker in _START_OF_FRAME:  # length (2), precision (1), height (2), width (2), components (1)
            return data[at + 9] if at + 9 < len(data) else None
        if marker == 0xDA:  # a scan before any frame header
            return None
        at += 2 + int.from_bytes(data[at + 2 : at + 4], "big")
    return None


def decode_place(decode_on: str, device: torch.device) -> str:
    """Where a streamed run decodes and crops (``loader`` or ``device``) for the config's
    ``decode_on`` (one of :data:`DECODE_PLACES`): ``auto`` decodes on the training device when
    it is a GPU."""
    if decode_on == "auto":
        return "device" if device.type == "cuda" else "loader"
    return decode_on


class EncodedImages(NamedTuple):
    """A batch's images as loader processes pass them to be decoded on the training device:
    ``batch`` its number in the epoch; ``data`` uint8, the JPEGs' bytes end to end, ``lengths``
    int64 (rows,) each row's byte count, 0 for a row the loader decoded itself (a PNG, a CMYK
    JPEG), whose uint8 (3, H, W) image is in ``decoded``, in row order; ``names`` the rows' entries
    (for a JPEG the device's decoder refuses)."""

    batch: int
    data: torch.Tensor
    lengths: torch.Tensor
    decoded: list[torch.Tensor]
    names: list[str]


def encode_batch(batch: int, entries: Sequence[str], files: Sequence[bytes]) -> EncodedImages:
    """Rows with a ``.jpg``/``.jpeg`` name and a grey or YCbCr JPEG's bytes stay encoded; the
    others are decoded here as :func:`decode_bytes` decodes them, so either placement decodes
    every file with the decoder the loader would."""
    on_device = [
        os.path.splitext(entry)[1].lower() in _JPEG_SUFFIXES and jpeg_components(data) in (1, 3)
        for entry, data in zip(entries, files)
    ]
    joined = b"".join(data for data, keep in zip(files, on_device) if keep)
    return EncodedImages(
        batch,
        torch.frombuffer(bytearray(joined), dtype=torch.uint8) if joined else torch.empty(0, dtype=torch.uint8),
        torch.tensor([len(data) if keep else 0 for data, keep in zip(files, on_device)], dtype=torch.int64),
        [decode_bytes(data, entry) for entry, data, keep in zip(entries, files, on_device) if not keep],
        list(entries),
    )


def decode_batch(encoded: EncodedImages, device: torch.device) -> list[torch.Tensor]:
    """The rows of ``encoded`` as uint8 RGB (3, H, W) on ``device``: the JPEGs in one call of
    ``decode_jpeg`` (batched nvjpeg on CUDA, libjpeg-turbo on the CPU, as :func:`decode_bytes`)."""
    lengths = encoded.lengths.tolist()
    chunks = encoded.data.split(lengths)
    loader_decoded = iter(encoded.decoded)
    images = [None if n else next(loader_decoded).to(device, non_blocking=True) for n in lengths]
    jpegs = [row for row, n in enumerate(lengths) if n]
    if not jpegs:
        return images
    try:
        found = decode_jpeg([chunks[row] for row in jpegs], mode=ImageReadMode.RGB, device=device)
    except RuntimeError:  # one file it refuses fails the whole call: one at a time, the CPU's decoder if need be
        found = [_decode_one(chunks[row], encoded.names[row], device) for row in jpegs]
    for row, image in zip(jpegs, found):
        images[row] = image
    return images


def _decode_one(data: torch.Tensor, name: str, device: torch.device) -> torch.Tensor:
    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        return decode_bytes(data.numpy().tobytes(), name).to(device)


def eval_image(image: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (3, H, W) -> uint8 (3, size, size): the short side resized to ``size * 256 / 224``
    (antialiased bilinear), then the centre square: the standard evaluation transform."""
    height, width = image.shape[-2:]
    short = round(size * 256 / 224)
    scale = short / min(height, width)
    new = (max(short, round(height * scale)), max(short, round(width * scale)))
    resized = F.interpolate(image[None].float(), size=new, mode="bilinear", antialias=True, align_corners=False)
    top, left = (new[0] - size) // 2, (new[1] - size) // 2
    return resized[0, :, top : top + size, left : left + size].round_().clamp_(0, 255).to(torch.uint8)


def batch_generator(seed: int, epoch: int, batch: int) -> torch.Generator:
    """The generator of batch ``batch``'s crops in epoch ``epoch``: a function of the three alone."""
    key = hashlib.sha256(f"crops {seed} {epoch} {batch}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(key[:8], "little") >> 1)


class StreamBatches(torch.utils.data.Dataset):
    """Item ``k``: batch ``k`` of an epoch, as ``(indices, crops)``: this process's rows of the
    batch (int64 indices into the index) and one uint8 tensor (rows, 3, size, size) per view.

    ``order`` is the epoch's permutation; ``rows`` this rank's slice of each batch of
    ``batch_size``. The crop and flip draws are the whole batch's, from
    :func:`batch_generator`, so a rank's crops are its rows of those one process makes.

    With a ``decode_device``, item ``k``'s crops are an :class:`EncodedImages` that
    :meth:`on_device` decodes and crops on that device, in the process that trains (and
    :func:`stream_batches` calls it): the same crops, bit for bit on the CPU."""

    def __init__(
        self,
        index: FileIndex,
        order: torch.Tensor,
        batch_size: int,
        specs: Sequence[ViewSpec],
        seed: int,
        epoch: int,
        rows: slice,
        decode_device: torch.device | None = None,
    ):
        self.read, self.paths = index.reader, index.packed_paths
        self.order, self.batch_size, self.specs = order, batch_size, tuple(specs)
        self.seed, self.epoch, self.rows, self.decode_device = seed, epoch, rows, decode_device

    def __len__(self) -> int:
        return len(self.order) // self.batch_size

    def __getitem__(self, k: int) -> tuple[torch.Tensor, list[torch.Tensor] | EncodedImages]:
        indices = self.order[k * self.batch_size : (k + 1) * self.batch_size]
        entries = [self.paths[i].decode() for i in indices[self.rows].tolist()]
        if self.decode_device is not None:
            return indices[self.rows], encode_batch(k, entries, [self.read(entry) for entry in entries])
        return indices[self.rows], self.crop(k, [decode_bytes(self.read(entry), entry) for entry in entries])

    def on_device(self, item: tuple[torch.Tensor, EncodedImages]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """An item of a ``decode_device`` data set, decoded and cropped on that device."""
        indices, encoded = item
        return indices, self.crop(encoded.batch, decode_batch(encoded, self.decode_device))

    def crop(self, k: int, images: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """This process's rows of batch ``k`` (uint8 (3, H, W) each, on any device) -> each view's
        crops, resized and flipped: the draws of :func:`batch_generator` (seed, epoch, k)."""
        mine = range(self.batch_size)[self.rows]
        # The draws do not depend on the sizes: other ranks' rows get a stand-in size of 1 x 1.
        sizes = torch.ones(self.batch_size, 2, dtype=torch.float64)
        sizes[self.rows] = torch.tensor([image.shape[-2:] for image in images], dtype=torch.float64)
        generator = batch_generator(self.seed, self.epoch, k)
        crops = []
        for spec in self.specs:
            box, flip = sample_crop_flip(self.batch_size, sizes, spec, generator)
            boxes = torch.stack([box.top, box.left, box.height, box.width], dim=1).long()
            crops.append(
                torch.stack([
                    ops.crop_resize_image(image, tuple(boxes[row].tolist()), spec.size, bool(flip[row]))
                    for image, row in zip(images, mine)
                ])
            )  # fmt: skip
        return crops


def stream_batches(dataset: StreamBatches, start: int, workers: int, pin_memory: bool) -> Iterator:
    """Batches ``start``, ``start + 1``, ... of ``dataset`` from ``workers`` loader processes (0:
    in this process), a few batches ahead of training; decoded and cropped here, on the device,
    as each is taken, when ``dataset`` has a ``decode_device``."""
    loader = iter(
        torch.utils.data.DataLoader(
            dataset,
            batch_size=None,
            sampler=range(start, len(dataset)),
            num_workers=workers,
            pin_memory=pin_memory,
            prefetch_factor=2 if workers else None,
        )
    )
    return loader if dataset.decode_device is None else map(dataset.on_device, loader)


class _EvalImages(torch.utils.data.Dataset):
    def __init__(self, read: Callable[[str], bytes], paths: Sequence[str], size: int):
        self.read, self.paths, self.size = read, paths, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return eval_image(decode_bytes(self.read(self.paths[i]), self.paths[i]), self.size)


def eval_images(
    read: Callable[[str], bytes], paths: Sequence[str], size: int, workers: int, batch_size: int = 256
) -> Iterator[torch.Tensor]:
    """The images at ``paths`` (entries of an index whose ``reader`` is ``read``) through
    :func:`eval_image`, as uint8 batches (B, 3, size, size) in order."""
    loader = torch.utils.data.DataLoader(_EvalImages(read, paths, size), batch_size=batch_size, num_workers=workers)
    yield from loader


class StreamedImages:
    """A split's images at the evaluation transform (:func:`eval_image`, ``size`` px), decoded
    when read: for an evaluation set too large to hold decoded. Stands where a uint8
    ``(N, 3, size, size)`` tensor would: ``len``, ``shape``, and indexing by indices, a boolean
    mask or a slice (another StreamedImages, nothing decoded); :meth:`batches` decodes in order
    with ``workers`` loader processes, :meth:`decode` all at once."""

    def __init__(self, read: Callable[[str], bytes], paths: Sequence[str], size: int, workers: int):
        self.read, self.paths, self.size, self.workers = read, list(paths), size, workers

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.paths), 3, self.size, self.size))

    def __getitem__(self, key) -> StreamedImages:
        if isinstance(key, slice):
            return StreamedImages(self.read, self.paths[key], self.size, self.workers)
        index = torch.as_tensor(key)
        if index.dtype == torch.bool:
            index = index.nonzero().squeeze(1)
        return StreamedImages(self.read, [self.paths[i] for i in index.reshape(-1).tolist()], self.size, self.workers)

    def contiguous(self) -> StreamedImages:
        return self

    def batches(self, batch_size: int = 256) -> Iterator[torch.Tensor]:
        """uint8 batches (B, 3, size, size), in order."""
        return eval_images(self.read, self.paths, self.size, self.workers, batch_size)

    def decode(self) -> torch.Tensor:
        """Every image, decoded in memory (the caller checks the decoded-bytes limit)."""
        if not self.paths:
            return torch.empty(0, 3, self.size, self.size, dtype=torch.uint8)
        return torch.cat(list(self.batches()))


def bound_heap(threshold: int = 4 << 20) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes for this process and the loader processes
    it forks, unless ``MALLOC_MMAP_THRESHOLD_`` already sets it; True when set.

    glibc raises the threshold to the size of each large block freed (up to 32 MiB), after which a
    step's large temporaries (a batch of 224-px views is tens of MB) come from the heap, whose
    freed pages stay resident. Measured over three streamed epochs of 64 JPEGs a batch at 224 px
    (4,000 images): the training process grew 481 -> 908 -> 983 -> 1,013 MiB with glibc's default,
    and stayed at 370-374 MiB with the threshold fixed at 4 MiB. Not glibc (macOS, musl): nothing.
    """
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold))


def default_workers() -> int:
    """One loader process per CPU core this process may use, less one for training, at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(8, cores - 1))

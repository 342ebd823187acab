"""Decoded datasets as uint8 arrays, cached on disk so a source is decoded once.

A cache entry is one uncompressed ``.npz`` file (``numpy.savez``) under
``<cache_dir>/data/``, named by the dataset and a hash of the source's resolved path,
the size and mtime of every file in it, and the image size. Entries are written to a
temporary file and moved into place with ``os.replace``, so a crash leaves either the
old state or a whole entry, never a truncated one. An unreadable entry is decoded again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

# Bump when decoding changes what the arrays hold, so old entries are not reused.
CACHE_FORMAT = 1


@dataclass
class SplitArrays:
    images: np.ndarray  # uint8 (N, 3, H, W), C-contiguous
    labels: np.ndarray  # int64 (N,), -1 where unlabeled


@dataclass
class DecodedDataset:
    """What a source module's ``decode`` returns: the dataset before it becomes tensors."""

    classes: list[str]
    train: SplitArrays
    test: SplitArrays
    unlabeled: SplitArrays | None = None


def default_cache_dir() -> Path:
    return Path(os.environ.get("CSSL_CACHE_DIR") or Path.home() / ".cache" / "cssl")


def fingerprint(source: Path) -> list[tuple[str, int, int]]:
    """``(path, size, mtime_ns)`` of the source file, or of every file under a source folder;
    a ``.txt`` list of images counts the images it names too."""
    if source.is_file():
        st = source.stat()
        entries = [(str(source), st.st_size, st.st_mtime_ns)]
        if source.suffix.lower() == ".txt":
            for line in source.read_text().splitlines():
                name = line.strip()
                if name and not name.startswith("#") and (source.parent / name).is_file():
                    st = (source.parent / name).stat()
                    entries.append((name, st.st_size, st.st_mtime_ns))
        return entries
    entries = []
    for root, dirs, files in os.walk(source, followlinks=True):
        dirs.sort()
        for name in sorted(files):
            st = os.stat(os.path.join(root, name))
            entries.append((os.path.relpath(os.path.join(root, name), source), st.st_size, st.st_mtime_ns))
    return entries


def index_digest(source: Path) -> tuple[str, int, int]:
    """A sha256 of the source's file index (:func:`fingerprint`: names, sizes and mtimes, so no
    file is read), with the number of files and their total bytes. Names are relative to the
    source, so a copy that keeps mtimes gives the same digest; a file added, removed, resized or
    rewritten gives another."""
    entries = fingerprint(source)
    if source.is_file():
        entries = [(source.name, size, mtime) for _, size, mtime in entries]
    digest = hashlib.sha256(json.dumps(entries).encode()).hexdigest()
    return digest, len(entries), sum(size for _, size, _ in entries)


def cache_file(cache_dir: Path, name: str, source: Path | None, image_size: int) -> Path:
    """The entry's path; any change to the source's files gives a new name."""
    key = {
        "format": CACHE_FORMAT,
        "name": name,
        "source": str(source.resolve()) if source is not None else None,
        "files": fingerprint(source.resolve()) if source is not None else [],
        "image_size": image_size,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return Path(cache_dir) / "data" / f"{name}-{image_size}px-{digest}.npz"


def load(path: Path) -> DecodedDataset | None:
    """The cached entry, or None when it is absent or unreadable."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
        unlabeled = None
        if "unlabeled_images" in arrays:
            unlabeled = SplitArrays(arrays["unlabeled_images"], arrays["unlabeled_labels"])
        return DecodedDataset(
            classes=[str(c) for c in arrays["classes"]],
            train=SplitArrays(arrays["train_images"], arrays["train_labels"]),
            test=SplitArrays(arrays["test_images"], arrays["test_labels"]),
            unlabeled=unlabeled,
        )
    except Exception as exc:  # a foreign or damaged file: decode again rather than fail
        log.warning("ignoring unreadable dataset cache %s (%s); decoding again", path, exc)
        return None


def save(path: Path, decoded: DecodedDataset) -> None:
    """Write the entry atomically; a cache that cannot be written only costs a later decode."""
    arrays = {
        "classes": np.array(decoded.classes, dtype=str),
        "train_images": decoded.train.images,
        "train_labels": decoded.train.labels,
        "test_images": decoded.test.images,
        "test_labels": decoded.test.labels,
    }
    if decoded.unlabeled is not None:
        arrays["unlabeled_images"] = decoded.unlabeled.images
        arrays["unlabeled_labels"] = decoded.unlabeled.labels
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.name + ".", suffix=".tmp", delete=False) as f:
            tmp_name = f.name
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_name, 0o644)  # NamedTemporaryFile makes it 0600; the worker and the API may share the cache
        os.replace(tmp_name, path)
        tmp_name = None
    except OSError as exc:
        log.warning("could not write dataset cache %s (%s); the next load decodes again", path, exc)
    finally:
        if tmp_name is not None:
            Path(tmp_name).unlink(missing_ok=True)

"""Where the CLI reads and writes checkpoints: a path, or an object-store URL (``s3://bucket/key``).

cssl_core reads and writes local files only, so a URL is read through a downloaded temporary
copy and written from a local temporary file uploaded once complete (``store.artifacts``).
"""

from __future__ import annotations

import posixpath
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cssl_core.errors import CheckpointError
from store.artifacts import download, is_url, upload


@contextmanager
def local_checkpoint(location: str) -> Iterator[Path]:
    """A local file with the checkpoint at ``location``: the path itself, or a temporary copy of
    the object, removed afterwards."""
    if not is_url(location):
        yield Path(location)
        return
    with tempfile.TemporaryDirectory(prefix="cssl-") as folder:
        local = Path(folder) / (posixpath.basename(location.rstrip("/")) or "checkpoint.pt")
        try:
            download(location, local)
        except FileNotFoundError:
            raise CheckpointError(f"checkpoint not found: {location}") from None
        yield local


@contextmanager
def local_output(location: str) -> Iterator[Path]:
    """A local path to write ``location``'s file to: the path itself, or a temporary file that is
    uploaded to the URL when the block ends without an error."""
    if not is_url(location):
        yield Path(location)
        return
    with tempfile.TemporaryDirectory(prefix="cssl-") as folder:
        local = Path(folder) / (posixpath.basename(location.rstrip("/")) or "out.pt")
        yield local
        upload(local, location)


def join(location: str, *parts: str) -> str:
    """``location/parts...``, for a path or a URL."""
    if is_url(location):
        return "/".join([location.rstrip("/"), *parts])
    return str(Path(location, *parts))

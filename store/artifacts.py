"""The artifact store: checkpoints and job logs, in a local folder or behind an fsspec URL.

``CSSL_ARTIFACT_ROOT`` is a folder (by default ``STATE_DIR/artifacts``) or a URL such as
``s3://bucket/prefix``. The paths the database records (``jobs/<id>/checkpoints/epoch_0001.pt``)
are relative to it either way.

cssl_core writes and reads local files only. With a local root the worker's run folder lies in
the root and nothing is copied. With a URL root the worker trains in a local folder of the same
layout (``STATE_DIR/artifact-cache``), uploads each checkpoint as soon as it is written, before
the checkpoint is recorded, and downloads one into that folder before resuming from it.

Writes are atomic. Locally a file is written under a temporary name and renamed. To an object
store a complete local file goes up in one ``put_file`` (one PUT, or a multipart upload that
the store assembles when the last part arrives): either way the object appears under its name
only once it is whole, and no temporary object is left behind.

S3's endpoint and credentials come from the standard variables (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``) or botocore's
configuration files, as for the AWS command line.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import fsspec

READ_BLOCK = 8 * 1024 * 1024  # bytes an open object fetches per request (s3fs's default: 50 MiB)


def is_url(location: str | os.PathLike) -> bool:
    """``s3://bucket/key`` and the like; a plain path (or ``file://``) is local."""
    text = str(location)
    return "://" in text and not text.startswith("file://")


def _filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    # No listings cache: another process (the worker) adds objects this one (the API) must see.
    return fsspec.core.url_to_fs(url, use_listings_cache=False)


def download(url: str, dest: Path) -> Path:
    """Copy the object at ``url`` to the local file ``dest``, which appears only once complete.
    Raises FileNotFoundError when there is no such object."""
    fs, path = _filesystem(url)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    os.close(fd)
    try:
        fs.get_file(path, tmp)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def upload(src: Path, url: str) -> None:
    """Copy the complete local file ``src`` to ``url`` in one upload (see the module's docstring)."""
    fs, path = _filesystem(url)
    fs.put_file(str(src), path)


@dataclass(frozen=True)
class ArtifactStore:
    """``root``: a folder or a URL. ``folder``: the local folder of the same layout where files
    are written and read: the root itself, or for a URL root a local copy of the files in use."""

    root: str
    folder: Path

    @property
    def remote(self) -> bool:
        return is_url(self.root)

    def url(self, relative: str) -> str:
        return f"{self.root}/{relative}"

    def relative(self, path: str | os.PathLike) -> str:
        """The store's name of a file in ``folder``."""
        return Path(path).resolve().relative_to(self.folder.resolve()).as_posix()

    def publish(self, path: Path, *, also_as: str | None = None) -> None:
        """Upload a file written in ``folder`` to the root under the same name (and, with
        ``also_as``, copy it there to that name too, without a second upload); nothing to do
        when the root is local."""
        if not self.remote:
            return
        relative = self.relative(path)
        upload(path, self.url(relative))
        if also_as is not None:
            fs, source = _filesystem(self.url(relative))
            fs.copy(source, _filesystem(self.url(also_as))[1])

    def fetch(self, relative: str) -> Path:
        """The local copy of ``relative`` in ``folder``: for a URL root, downloaded unless a copy of
        the same size is there already. Where the root has no such file, the path returned does
        not exist either (and whoever reads it reports the missing checkpoint)."""
        local = self.folder / relative
        if self.remote:
            size = self.size(relative)
            if size is not None and not (local.is_file() and local.stat().st_size == size):
                download(self.url(relative), local)
        return local

    def size(self, relative: str) -> int | None:
        """Bytes of the object ``relative`` at the root, or None where there is none."""
        fs, path = _filesystem(self.url(relative))
        try:
            info = fs.info(path)
        except FileNotFoundError:
            return None
        return int(info["size"]) if info.get("type") == "file" else None

    def open(self, relative: str) -> IO[bytes]:
        fs, path = _filesystem(self.url(relative))
        return fs.open(path, "rb", block_size=READ_BLOCK)

    def read_text(self, relative: str) -> str:
        """The text of ``relative`` at the root, or "" where there is none."""
        try:
            with self.open(relative) as f:
                return f.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def remove(self, relative: str) -> None:
        """Delete the file or folder ``relative`` at the root (and any local copies of it);
        nothing to do where there is none."""
        if not safe_relative(relative):
            raise ValueError(f"not a path inside the artifact store: {relative!r}")
        if self.remote:
            fs, path = _filesystem(self.url(relative))
            with contextlib.suppress(FileNotFoundError):
                fs.rm(path, recursive=True)
        local = self.folder / relative
        if local.is_dir() and not local.is_symlink():
            shutil.rmtree(local)
        else:
            local.unlink(missing_ok=True)

    def forget(self, relative: str) -> None:
        """Remove the local copies under ``relative`` once nothing needs them (URL roots only:
        for a local root they are the artifacts themselves)."""
        if self.remote:
            shutil.rmtree(self.folder / relative, ignore_errors=True)


def safe_relative(relative: str) -> bool:
    """Whether a recorded path names something inside the root: relative, without ``..``."""
    normal = posixpath.normpath(relative)
    return not (normal.startswith(("/", "../")) or normal in ("..", ".") or "\\" in relative)

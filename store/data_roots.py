"""The files jobs may read: the data roots (``CSSL_DATA_ROOTS``), and the archives users
upload, unpacked under the first root's ``uploads/`` folder.

A job names its data by a path. The API when the job is submitted, and the worker again when
it runs (a link may have changed in between), resolve it with every symlink followed and
accept it only inside a root; a relative path is relative to the first root. The uploads
folder is reserved: a job reaches an upload only by its id, which the API checks belongs to
the job's owner, and then stores the path ``uploads/<id>``; both resolve that path by the id
alone (:func:`resolve_job_data`), never by following the path into the uploads folder.

An upload is streamed into ``uploads/.incoming/<id>.tar.gz`` (its size limited and its
sha256 computed on the way), then unpacked member by member, each checked first: a regular
file or a folder under a relative name without ``..``; no links, devices or pipes. The folder
becomes ``uploads/<id>`` only once every member is out and the gzip checksum has matched;
on any error nothing of it is left.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import re
import shutil
import tarfile
import zlib
from pathlib import Path, PurePosixPath

from store.settings import Settings

UPLOADS = "uploads"
UPLOAD_ID = re.compile(r"[0-9a-f]{32}")
INCOMING = ".incoming"
# Unpacked, an upload may take this many times CSSL_MAX_UPLOAD_BYTES: images barely compress,
# while a small archive of zeros could otherwise fill the disk.
UNPACKED_RATIO = 4
# The "data" filter (Python 3.11.4+) refuses what the checks below refuse and drops unsafe
# modes; where it is missing the checks alone decide, and no owner or mode is restored.
_EXTRACT = {"filter": "data"} if hasattr(tarfile, "data_filter") else {"set_attrs": False}
_FilterError = getattr(tarfile, "FilterError", ())
# A file and a folder of the same name, or a name the file system cannot hold: the archive's fault.
_ARCHIVE_ERRNOS = {errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG, errno.EINVAL}


class ArchiveTooLarge(Exception):
    """The upload, or its files unpacked, is over the limit; the message says which."""


class BadArchive(Exception):
    """Not a readable .tar.gz, or a member that may not be unpacked; the message says which."""


def resolve_data_path(settings: Settings, path: str) -> Path | None:
    """``path`` with every symlink resolved, if it exists inside a data root and outside the
    uploads folder; else None.

    A relative path is taken relative to the first root. The uploads folder, anything in it
    and anything holding it are refused: uploads are reached by id (:func:`resolve_upload`).
    None says nothing about why, so that a refusal tells a user nothing about the server's files.
    """
    try:
        resolved = (settings.data_roots[0] / path).resolve(strict=True)
    except (OSError, RuntimeError, ValueError):  # missing, unreadable, a link loop, a NUL byte
        return None
    if not any(resolved.is_relative_to(root.resolve()) for root in settings.data_roots):
        return None
    reserved = settings.uploads_folder.resolve()
    if resolved.is_relative_to(reserved) or reserved.is_relative_to(resolved):
        return None
    return resolved


def resolve_upload(settings: Settings, upload_id: str) -> Path | None:
    """The folder of the upload ``upload_id``, found by the id alone: an id is 32 hex digits
    (``uuid4().hex``), so it names no other path, and the folder must be a real one directly in
    the uploads folder. None if there is none. Whose upload it is, the caller checks."""
    if not UPLOAD_ID.fullmatch(upload_id):
        return None
    folder = settings.uploads_folder / upload_id
    if folder.is_symlink() or not folder.is_dir():
        return None
    return folder.resolve()


def resolve_job_data(settings: Settings, path: str) -> Path | None:
    """A job's stored data path resolved: ``uploads/<id>`` by :func:`resolve_upload`, any
    other path by :func:`resolve_data_path` (so never into the uploads folder)."""
    upload = upload_id(path)
    return resolve_upload(settings, upload) if upload is not None else resolve_data_path(settings, path)


def upload_path(upload_id: str) -> str:
    """Where an upload lies, relative to the first root: the data path of a job that names it."""
    return f"{UPLOADS}/{upload_id}"


def upload_id(path: str | None) -> str | None:
    """The upload a job's data path names (exactly ``uploads/<id>``), or None for a path of the user's own."""
    if not path:
        return None
    head, _, rest = path.partition("/")
    return rest if head == UPLOADS and rest and "/" not in rest else None


class Receiver:
    """Writes an upload's bytes to ``uploads/.incoming/<id>.tar.gz``, counting its size and
    sha256; past ``CSSL_MAX_UPLOAD_BYTES`` the file is removed and :class:`ArchiveTooLarge` raised."""

    def __init__(self, settings: Settings, upload_id: str):
        self.limit = settings.max_upload_bytes
        self.path = settings.uploads_folder / INCOMING / f"{upload_id}.tar.gz"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.size_bytes = 0
        self._sha256 = hashlib.sha256()
        self._file = open(self.path, "xb")

    def write(self, chunk: bytes) -> None:
        self.size_bytes += len(chunk)
        if self.size_bytes > self.limit:
            self.discard()
            raise ArchiveTooLarge(too_large(self.limit))
        self._sha256.update(chunk)
        self._file.write(chunk)

    def close(self) -> None:
        self._file.close()

    def discard(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()


def too_large(limit: int) -> str:
    return (f"the archive is larger than this service takes ({limit:,} bytes); split the data set, "
            "or ask for a higher CSSL_MAX_UPLOAD_BYTES")


def unpack_upload(settings: Settings, upload_id: str, archive: Path) -> int:
    """Unpack ``archive`` into ``uploads/<id>``; returns the number of files. Raises
    :class:`BadArchive` or :class:`ArchiveTooLarge`, and leaves nothing behind, on any error."""
    staging = settings.uploads_folder / INCOMING / upload_id
    try:
        files = _unpack(archive, staging, settings.max_upload_bytes * UNPACKED_RATIO)
        if files == 0:
            raise BadArchive("the archive holds no files")
        staging.rename(settings.uploads_folder / upload_id)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return files


def remove_upload(settings: Settings, upload_id: str) -> None:
    """Delete an upload's files. The folder is moved aside first, so that a job starting now
    finds no upload rather than half of one."""
    folder = settings.uploads_folder / upload_id
    doomed = settings.uploads_folder / INCOMING / f"{upload_id}.deleting"
    if folder.exists():
        doomed.parent.mkdir(parents=True, exist_ok=True)
        folder.rename(doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def _unpack(archive: Path, dest: Path, limit: int) -> int:
    dest.mkdir(parents=True)
    files: set[str] = set()
    unpacked = 0
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                _check(member)
                unpacked += member.size
                if unpacked > limit:
                    raise ArchiveTooLarge(f"unpacked, the archive's files take more than {limit:,} bytes, "
                                          f"{UNPACKED_RATIO} times the largest archive this service takes")
                try:
                    tar.extract(member, dest, **_EXTRACT)
                except OSError as exc:
                    if exc.errno not in _ARCHIVE_ERRNOS:
                        raise  # the service's disk, not the archive
                    raise BadArchive(f"member {member.name!r} cannot be unpacked: {os.strerror(exc.errno)}") from None
                if member.isfile():
                    files.add(os.path.normpath(member.name))
            # Read on to the end: tarfile stops quietly at a header it cannot read, so only the
            # gzip checksum at the end of the stream shows damage after the last good member.
            while tar.fileobj.read(1 << 20):
                pass
    except _FilterError as exc:
        raise BadArchive(f"member {exc.tarinfo.name!r} may not be unpacked "
                         "(a link, a device or a path out of the archive)") from None
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile):
        raise BadArchive("the body is not a readable .tar.gz archive (damaged, cut short, or another format); "
                         "make it with tar -czf") from None
    return len(files)


def _check(member: tarfile.TarInfo) -> None:
    name = member.name
    if PurePosixPath(name).is_absolute():
        raise BadArchive(f"member {name!r} has an absolute path; archive relative paths (tar -czf data.tar.gz -C folder .)")
    if ".." in PurePosixPath(name).parts:
        raise BadArchive(f"member {name!r} has '..' in its path; archive relative paths inside the folder")
    if member.issym() or member.islnk():
        raise BadArchive(f"member {name!r} is a link; links are not accepted, archive the files they point at (tar -h)")
    if not (member.isfile() or member.isdir()):
        raise BadArchive(f"member {name!r} is a device, pipe or other special file; only files and folders are accepted")

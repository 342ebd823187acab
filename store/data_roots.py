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
file or a folder under a relative name without ``..``; no links, devices or pipes; no more
members, folders or path parts than the settings allow. Every byte the gzip stream inflates to
counts against the unpacked limit, what follows the tar's end marker included. The folder
becomes ``uploads/<id>`` only once every member is out and the gzip checksum has matched;
on any error nothing of it is left. Writing stops when the disk would keep less than
``CSSL_UPLOAD_MIN_FREE_BYTES`` free.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import re
import shutil
import tarfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from store.artifacts import is_url
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
GZIP_MAGIC = b"\x1f\x8b"
NOT_TAR_GZ = "the body is not a readable .tar.gz archive (damaged, cut short, or another format); make it with tar -czf"
# Bytes written between two looks at the disk's free space.
FREE_SPACE_EVERY = 64 * 1024**2


class ArchiveTooLarge(Exception):
    """The upload, or its files unpacked, is over the limit; the message says which."""


class BadArchive(Exception):
    """Not a readable .tar.gz, or a member that may not be unpacked; the message says which."""


class DiskFull(Exception):
    """The uploads folder's disk would keep less than ``CSSL_UPLOAD_MIN_FREE_BYTES`` free."""


@dataclass(frozen=True)
class Unpacked:
    num_files: int
    # What the gzip stream inflated to: the files, and the tar headers between them.
    num_bytes: int


def resolve_data_path(settings: Settings, path: str) -> Path | str | None:
    """``path`` with every symlink resolved, if it exists inside a data root and outside the
    uploads folder; else None.

    A relative path is taken relative to the first root. The uploads folder, anything in it
    and anything holding it are refused: uploads are reached by id (:func:`resolve_upload`).
    None says nothing about why, so that a refusal tells a user nothing about the server's files.
    A URL is :func:`resolve_data_url`'s.
    """
    if is_url(path):
        return resolve_data_url(settings, path)
    try:
        resolved = (settings.data_folders[0] / path).resolve(strict=True)
    except (OSError, RuntimeError, ValueError):  # missing, unreadable, a link loop, a NUL byte
        return None
    if not any(resolved.is_relative_to(root.resolve()) for root in settings.data_folders):
        return None
    reserved = settings.uploads_folder.resolve()
    if resolved.is_relative_to(reserved) or reserved.is_relative_to(resolved):
        return None
    return resolved


def resolve_data_url(settings: Settings, url: str) -> str | None:
    """``url`` without a trailing /, if it lies under a data root that is a bucket prefix (the
    same scheme and bucket, the root's key a leading part of its key); else None. It must be
    written in its normal form: no ``.`` or ``..`` parts, no empty parts, no query or fragment,
    so the text compared is the object key that is read. Whether objects are there, the data
    set's reader says."""
    scheme, sep, rest = url.partition("://")
    rest = rest.rstrip("/")
    parts = rest.split("/")
    if not sep or not scheme or not rest or any(c in url for c in "?#\\\0") or any(p in ("", ".", "..") for p in parts):
        return None
    for root in settings.data_urls:
        root_scheme, _, root_rest = root.partition("://")
        root_parts = root_rest.split("/")
        if scheme == root_scheme and parts[: len(root_parts)] == root_parts:
            return f"{scheme}://{rest}"
    return None


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


def resolve_job_data(settings: Settings, path: str) -> Path | str | None:
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
    sha256. On the first error the file is removed and the error raised: past ``limit`` bytes
    :class:`ArchiveTooLarge` with ``refusal`` as its message, a body that is not gzip
    :class:`BadArchive`, a disk nearly full :class:`DiskFull`."""

    def __init__(self, settings: Settings, upload_id: str, limit: int, refusal: str):
        self.settings, self.limit, self.refusal = settings, limit, refusal
        self.path = settings.uploads_folder / INCOMING / f"{upload_id}.tar.gz"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.size_bytes = 0
        self._head = b""
        self._free_space_checked_at = 0
        self._sha256 = hashlib.sha256()
        self._file = open(self.path, "xb")  # noqa: SIM115 (closed by close(), which every caller reaches)

    def write(self, chunk: bytes) -> None:
        try:
            self._write(chunk)
        except BaseException:
            self.discard()
            raise

    def _write(self, chunk: bytes) -> None:
        self.size_bytes += len(chunk)
        if self.size_bytes > self.limit:
            raise ArchiveTooLarge(self.refusal)
        if len(self._head) < len(GZIP_MAGIC):
            # Said at once, rather than after gigabytes of something else.
            self._head += chunk[: len(GZIP_MAGIC) - len(self._head)]
            if not GZIP_MAGIC.startswith(self._head):
                raise BadArchive(NOT_TAR_GZ)
        if self.size_bytes - self._free_space_checked_at >= FREE_SPACE_EVERY:
            self._free_space_checked_at = self.size_bytes
            check_free_space(self.settings)
        self._sha256.update(chunk)
        self._file.write(chunk)

    def close(self) -> None:
        self._file.close()
        if self._head != GZIP_MAGIC:
            self.discard()
            raise BadArchive(NOT_TAR_GZ)

    def discard(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()


def too_large(limit: int) -> str:
    return (
        f"the archive is larger than this service takes ({limit:,} bytes); split the data set, "
        "or ask for a higher CSSL_MAX_UPLOAD_BYTES"
    )


def too_large_unpacked(limit: int) -> str:
    return (
        f"unpacked, the archive takes more than {limit:,} bytes, {UNPACKED_RATIO} times the largest archive "
        "this service takes (CSSL_MAX_UPLOAD_BYTES); split the data set"
    )


def over_quota(quota: int, used: int) -> str:
    return (
        f"this upload would take your uploads past your quota of {quota:,} bytes on disk "
        f"(CSSL_UPLOAD_QUOTA_BYTES), of which {used:,} are in use; delete uploads you no longer need "
        "(DELETE /v1/datasets/uploads/{id}), or ask for a higher quota"
    )


def check_free_space(settings: Settings, wanted: int = 0) -> None:
    """Raise :class:`DiskFull` if writing ``wanted`` more bytes would leave the uploads folder's
    disk with less than ``CSSL_UPLOAD_MIN_FREE_BYTES`` free."""
    floor = settings.upload_min_free_bytes
    settings.uploads_folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(settings.uploads_folder).free
    if free - wanted < floor:
        needs = f"; this upload needs {wanted:,} more" if wanted else ""
        raise DiskFull(
            f"the service's disk is nearly full: {free:,} bytes free{needs}, and it keeps {floor:,} free "
            "(CSSL_UPLOAD_MIN_FREE_BYTES); try again later, delete uploads you no longer need, "
            "or ask the service's operator for space"
        )


def unpack_upload(
    settings: Settings,
    upload_id: str,
    archive: Path,
    *,
    max_bytes: int,
    refusal: str,
    beat: Callable[[], None] = lambda: None,
) -> Unpacked:
    """Unpack ``archive`` into ``uploads/<id>``. More than ``max_bytes`` inflated raises
    :class:`ArchiveTooLarge` with ``refusal`` as its message; a member that may not be unpacked,
    :class:`BadArchive`; a disk nearly full, :class:`DiskFull`. ``beat`` is called as the work
    goes on, and may raise to stop it. On any error nothing is left behind."""
    staging = settings.uploads_folder / INCOMING / upload_id
    try:
        unpacked = _unpack(settings, archive, staging, max_bytes, refusal, beat)
        if unpacked.num_files == 0:
            raise BadArchive("the archive holds no files")
        staging.rename(settings.uploads_folder / upload_id)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return unpacked


def remove_upload(settings: Settings, upload_id: str) -> None:
    """Delete an upload's files. The folder is moved aside first, so that a job starting now
    finds no upload rather than half of one."""
    folder = settings.uploads_folder / upload_id
    doomed = settings.uploads_folder / INCOMING / f"{upload_id}.deleting"
    if folder.exists():
        doomed.parent.mkdir(parents=True, exist_ok=True)
        folder.rename(doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def discard_upload(settings: Settings, upload_id: str) -> None:
    """Delete all an upload left: its files, and its archive and staging folder in ``.incoming``."""
    remove_upload(settings, upload_id)
    incoming = settings.uploads_folder / INCOMING
    (incoming / f"{upload_id}.tar.gz").unlink(missing_ok=True)
    shutil.rmtree(incoming / upload_id, ignore_errors=True)


def sweep_incoming(settings: Settings, unpacking: set[str]) -> list[str]:
    """Delete what interrupted uploads left in ``uploads/.incoming`` (archives, staging folders,
    folders being deleted) untouched for ``CSSL_UPLOAD_STALE_AFTER`` seconds, but those of the
    uploads in ``unpacking``, whose work goes on. Returns the names deleted.

    An archive being received is written to as it comes, so it stays fresh; a client that sends
    nothing for that long finds its upload gone."""
    incoming = settings.uploads_folder / INCOMING
    cutoff = time.time() - settings.upload_stale_after
    swept = []
    for entry in sorted(incoming.iterdir()) if incoming.is_dir() else ():
        if entry.name.split(".", 1)[0] in unpacking:
            continue
        try:
            if entry.lstat().st_mtime >= cutoff:
                continue
        except FileNotFoundError:  # deleted by its own request meanwhile
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        swept.append(entry.name)
    return swept


class _Inflated:
    """The gzip stream's inflated bytes as tarfile reads them, every one counted: past the limit
    it raises, so a stream that goes on after the tar's end marker cannot inflate unbounded."""

    def __init__(self, gz: gzip.GzipFile, limit: int, refusal: str, tick: Callable[[int], None]):
        self._gz, self._limit, self._refusal, self._tick = gz, limit, refusal, tick
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        allowed = self._limit - self.count + 1  # one past the limit shows it was passed
        data = self._gz.read(allowed if size < 0 else min(size, allowed))
        self.count += len(data)
        if self.count > self._limit:
            raise ArchiveTooLarge(self._refusal)
        self._tick(self.count)
        return data


def _unpack(
    settings: Settings, archive: Path, dest: Path, limit: int, refusal: str, beat: Callable[[], None]
) -> Unpacked:
    dest.mkdir(parents=True)
    files: set[str] = set()
    folders: set[PurePosixPath] = set()
    members = declared = 0
    free_space_checked_at = 0

    def tick(inflated: int) -> None:
        nonlocal free_space_checked_at
        if inflated - free_space_checked_at >= FREE_SPACE_EVERY:
            free_space_checked_at = inflated
            check_free_space(settings)
        beat()

    try:
        with gzip.open(archive, "rb") as gz:
            stream = _Inflated(gz, limit, refusal, tick)
            # A stream ("r|"): read once, front to back, and no member list kept in memory.
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                while (member := tar.next()) is not None:
                    tar.members.clear()
                    _check(member)
                    members += 1
                    if members > settings.max_upload_members:
                        raise ArchiveTooLarge(
                            f"the archive holds more than {settings.max_upload_members:,} members "
                            "(files and folders), the most this service unpacks "
                            "(CSSL_MAX_UPLOAD_MEMBERS); split the data set"
                        )
                    path = _check_depth(member, settings.max_upload_depth)
                    _add_folders(folders, path if member.isdir() else path.parent, settings.max_upload_folders)
                    declared += member.size
                    if declared > limit:
                        raise ArchiveTooLarge(refusal)
                    try:
                        tar.extract(member, dest, **_EXTRACT)
                    except OSError as exc:
                        if exc.errno not in _ARCHIVE_ERRNOS:
                            raise  # the service's disk, not the archive
                        raise BadArchive(
                            f"member {member.name!r} cannot be unpacked: {os.strerror(exc.errno)}"
                        ) from None
                    if member.isfile():
                        files.add(str(path))
                # Read on to the end: tarfile stops quietly at a header it cannot read, so only
                # the gzip checksum at the end of the stream shows damage after the last good
                # member. What follows the end marker counts against the limit like the rest.
                while stream.read(1 << 20):
                    pass
    except _FilterError as exc:
        raise BadArchive(
            f"member {exc.tarinfo.name!r} may not be unpacked (a link, a device or a path out of the archive)"
        ) from None
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile):
        raise BadArchive(NOT_TAR_GZ) from None
    return Unpacked(num_files=len(files), num_bytes=stream.count)


def _check_depth(member: tarfile.TarInfo, max_depth: int) -> PurePosixPath:
    """The member's path, normalised; :class:`BadArchive` if it has more than ``max_depth`` parts."""
    path = PurePosixPath(os.path.normpath(member.name))
    if len(path.parts) > max_depth:
        raise BadArchive(
            f"member {member.name!r} is {len(path.parts)} parts deep, more than the {max_depth} this "
            "service unpacks (CSSL_MAX_UPLOAD_DEPTH); archive the data set's folder itself"
        )
    return path


def _add_folders(folders: set[PurePosixPath], folder: PurePosixPath, max_folders: int) -> None:
    """Count ``folder`` and the folders above it, those a member only implies included."""
    while folder.parts and folder not in folders:
        folders.add(folder)
        if len(folders) > max_folders:
            raise ArchiveTooLarge(
                f"the archive unpacks into more than {max_folders:,} folders, the most this "
                "service makes for one upload (CSSL_MAX_UPLOAD_FOLDERS); split the data set"
            )
        folder = folder.parent


def _check(member: tarfile.TarInfo) -> None:
    name = member.name
    if PurePosixPath(name).is_absolute():
        raise BadArchive(
            f"member {name!r} has an absolute path; archive relative paths (tar -czf data.tar.gz -C folder .)"
        )
    if ".." in PurePosixPath(name).parts:
        raise BadArchive(f"member {name!r} has '..' in its path; archive relative paths inside the folder")
    if member.issym() or member.islnk():
        raise BadArchive(f"member {name!r} is a link; links are not accepted, archive the files they point at (tar -h)")
    if not (member.isfile() or member.isdir()):
        raise BadArchive(
            f"member {name!r} is a device, pipe or other special file; only files and folders are accepted"
        )

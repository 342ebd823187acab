"""Uploads unpack off the request path, in a small thread pool of the API process.

``POST /v1/datasets/uploads`` answers once the archive is on disk and its row says
``unpacking``; a thread here unpacks it and records ``ready``, or ``failed`` with the reason.
While an upload waits or unpacks, this process writes its heartbeat every
``CSSL_HEARTBEAT_INTERVAL``. Every API process sweeps, at start and every ``CSSL_SWEEP_INTERVAL``:
an upload whose heartbeat is older than ``CSSL_HEARTBEAT_TIMEOUT`` lost its process (a crash, a
kill) and is marked ``failed``, its files deleted; so is anything in ``uploads/.incoming``
untouched for ``CSSL_UPLOAD_STALE_AFTER``. Interrupted unpackings are not resumed: the uploader
is told to upload again. A process that stops on purpose fails its unpackings at once.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from store import data_roots, datasets
from store.db import session_scope
from store.settings import Settings

log = logging.getLogger(__name__)

# Unpacking is disk-bound; two at a time keep the disk busy without starving the requests.
UNPACK_THREADS = 2
FAILED_ON_OUR_SIDE = "the service could not unpack it (an error on its side, in its log); upload it again"


class Stopped(Exception):
    """The process is stopping, or the upload is no longer unpacking (deleted, or declared lost)."""


def receive_limit(settings: Settings, used: int) -> tuple[int, str]:
    """The most bytes an owner who has ``used`` bytes may send now, and the refusal past it."""
    return _within_quota(settings, used, settings.max_upload_bytes, data_roots.too_large(settings.max_upload_bytes))


def unpack_limit(settings: Settings, used: int) -> tuple[int, str]:
    """The most bytes an upload may inflate to when the owner's others take ``used``, and the refusal."""
    limit = settings.max_upload_bytes * data_roots.UNPACKED_RATIO
    return _within_quota(settings, used, limit, data_roots.too_large_unpacked(limit))


def _within_quota(settings: Settings, used: int, limit: int, refusal: str) -> tuple[int, str]:
    quota = settings.upload_quota_bytes
    if quota and quota - used < limit:
        return max(quota - used, 0), data_roots.over_quota(quota, used)
    return limit, refusal


class Unpacker:
    def __init__(self, settings: Settings):
        self.settings = settings
        self._lock = threading.Lock()
        self._mine: set[str] = set()  # waiting or unpacking here
        self._abandoned: set[str] = set()  # of those, the ones no longer unpacking in the database
        self._stop = threading.Event()
        self._pool: ThreadPoolExecutor | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Sweep, then take uploads; called as the app starts (again, if it is started again)."""
        self._sweep()
        self._stop.clear()
        self._pool = ThreadPoolExecutor(UNPACK_THREADS, thread_name_prefix="cssl-unpack")
        self._thread = threading.Thread(target=self._loop, name="cssl-upload-sweeper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._pool is not None:
            self._pool.shutdown(wait=True)  # each unpacking sees the flag at its next read and fails
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._pool = self._thread = None

    def submit(self, upload_id: str, owner: str) -> None:
        if self._pool is None:
            raise RuntimeError("the unpacker takes uploads only while the app runs (its lifespan)")
        with self._lock:
            self._mine.add(upload_id)
        self._pool.submit(self._run, upload_id, owner)

    def _run(self, upload_id: str, owner: str) -> None:
        settings = self.settings
        archive = settings.uploads_folder / data_roots.INCOMING / f"{upload_id}.tar.gz"
        unpacked, error = None, None
        try:
            self._check(upload_id)
            with session_scope(settings.database_url) as session:
                used = datasets.disk_use(session, owner, excluding=upload_id)
            max_bytes, refusal = unpack_limit(settings, used)
            unpacked = data_roots.unpack_upload(
                settings, upload_id, archive, max_bytes=max_bytes, refusal=refusal, beat=lambda: self._check(upload_id)
            )
        except (data_roots.ArchiveTooLarge, data_roots.BadArchive, data_roots.DiskFull) as exc:
            error = str(exc)
        except Stopped:
            error = datasets.LOST
        except Exception:
            log.exception("unpacking upload %s failed", upload_id)
            error = FAILED_ON_OUR_SIDE
        finally:
            archive.unlink(missing_ok=True)
        try:
            with session_scope(settings.database_url) as session:
                if error is None:
                    recorded = datasets.finish_unpacking(
                        session, upload_id, num_files=unpacked.num_files, unpacked_bytes=unpacked.num_bytes
                    )
                else:
                    recorded = datasets.fail_unpacking(session, upload_id, error)
            if error is not None or not recorded:  # failed, deleted meanwhile, or declared lost
                data_roots.discard_upload(settings, upload_id)
        except Exception:  # the database: the row stays unpacking, and the sweep fails it
            log.exception("could not record upload %s as %s", upload_id, "failed" if error else "ready")
        finally:
            with self._lock:
                self._mine.discard(upload_id)
                self._abandoned.discard(upload_id)

    def _check(self, upload_id: str) -> None:
        if self._stop.is_set() or upload_id in self._abandoned:
            raise Stopped

    def _loop(self) -> None:
        swept_at = time.monotonic()
        while not self._stop.wait(self.settings.heartbeat_interval):
            try:
                self._beat()
                if time.monotonic() - swept_at >= self.settings.sweep_interval:
                    swept_at = time.monotonic()
                    self._sweep()
            except Exception:
                log.exception("the uploads' heartbeat or sweep failed; trying again")

    def _beat(self) -> None:
        with self._lock:
            mine = set(self._mine)
        if not mine:
            return
        with session_scope(self.settings.database_url) as session:
            gone = {upload_id for upload_id in mine if not datasets.beat(session, upload_id)}
        with self._lock:
            self._abandoned |= gone & self._mine

    def _sweep(self) -> None:
        settings = self.settings
        try:
            with session_scope(settings.database_url) as session:
                lost = datasets.fail_lost_unpackings(session, settings.heartbeat_timeout)
            with session_scope(settings.database_url) as session:
                unpacking = datasets.unpacking_ids(session)
        except Exception:
            log.exception("could not sweep the uploads; trying again in %ss", settings.sweep_interval)
            return
        for upload_id in lost:
            log.warning("upload %s stopped unpacking (its API process stopped); failed", upload_id)
            data_roots.discard_upload(settings, upload_id)
        for name in data_roots.sweep_incoming(settings, unpacking):
            log.warning("deleted %s, left in %s by an interrupted upload", name, data_roots.INCOMING)

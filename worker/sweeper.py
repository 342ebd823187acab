"""Re-publishing: the job row is the record, the message only a wake-up call.

A job submitted while the broker was down, or whose worker died, sits in the database as
``queued``; the sweeper publishes it (again). Duplicates are harmless because a worker runs
a job only after claiming it with a conditional update.
"""

from __future__ import annotations

import logging
import threading

from celery import Celery

from store import jobs
from store.db import session_scope
from store.settings import Settings
from worker.app import publish

log = logging.getLogger(__name__)


def try_publish(app: Celery, settings: Settings, job_id: str, priority: int) -> bool:
    """False if the broker cannot be reached: the job stays queued and unpublished, and the
    next sweep publishes it."""
    try:
        publish(app, settings, job_id, priority)
    except Exception as exc:  # any broker error
        log.warning("could not publish job %s (%s); it stays queued and will be published again", job_id, exc)
        return False
    return True


def publish_job(app: Celery, settings: Settings, job_id: str, priority: int) -> bool:
    if not try_publish(app, settings, job_id, priority):
        return False
    with session_scope(settings.database_url) as session:
        jobs.mark_published(session, job_id)
    return True


def sweep(app: Celery, settings: Settings) -> dict[str, int]:
    with session_scope(settings.database_url) as session:
        requeued = jobs.requeue_lost(session, settings.heartbeat_timeout, settings.max_attempts)
    for job_id in requeued:
        log.warning("job %s lost its worker; re-queued", job_id)
    with session_scope(settings.database_url) as session:
        pending = jobs.unpublished_jobs(session, settings.republish_after)
    published = sum(publish_job(app, settings, job_id, priority) for job_id, priority in pending)
    return {"requeued": len(requeued), "published": published}


class Sweeper:
    """Runs :func:`sweep` every ``settings.sweep_interval`` seconds in a daemon thread."""

    def __init__(self, app: Celery, settings: Settings):
        self.app, self.settings = app, settings
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cssl-sweeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while True:
            try:
                sweep(self.app, self.settings)
            except Exception:
                log.exception("sweep failed; trying again in %ss", self.settings.sweep_interval)
            if self._stop.wait(self.settings.sweep_interval):
                return

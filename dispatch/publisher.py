"""Publishing a job: its id sent to the queue at its priority, and noted on the job row. The job
row is the record and the message only a wake-up call: a job whose message could not be sent
stays queued, and the sweeper (``dispatch.sweeper``) publishes it once the broker is back."""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Celery

from dispatch.broker import JOIN_JOB, MAX_PRIORITY, RUN_JOB
from dispatch.routing import Resources, job_queue
from store import jobs
from store.db import session_scope
from store.settings import Settings

log = logging.getLogger(__name__)


def publish(
    app: Celery, settings: Settings, job_id: str, priority: int, resources: dict[str, Any] | None = None
) -> None:
    """Send the job id to the queue its resources pick (``dispatch.routing``); raises when the
    broker cannot be reached."""
    app.send_task(
        RUN_JOB,
        args=[job_id],
        queue=job_queue(settings.queue, Resources.from_stored(resources)),
        priority=MAX_PRIORITY - priority,
        retry=False,
    )


def publish_joins(app: Celery, settings: Settings, job_id: str, attempt: int, resources: dict[str, Any]) -> None:
    """Ask ``nodes - 1`` more workers to join the attempt, on the job's queue at the highest
    priority: a job on several nodes starts only when all of them are there. Raises when the
    broker cannot be reached."""
    stored = Resources.from_stored(resources)
    assert stored is not None
    for node in range(1, stored.nodes):
        app.send_task(JOIN_JOB, args=[job_id, attempt, node], queue=job_queue(settings.queue, stored), priority=0)


class Publisher:
    """Sends job ids to the queue and notes it on the job.

    When the broker is down, the Redis client spends seconds retrying each connection. After a
    failure, requests therefore skip the broker for ``sweep_interval`` seconds: their jobs stay
    queued and unpublished, and the sweeper (``force=True``) sends them once it is back.
    """

    def __init__(self, app: Celery, settings: Settings):
        self.app, self.settings = app, settings
        self._down_until = 0.0

    def send(self, job_id: str, priority: int, resources: dict[str, Any] | None = None, *, force: bool = False) -> bool:
        if not force and time.monotonic() < self._down_until:
            return False
        try:
            publish(self.app, self.settings, job_id, priority, resources)
        except Exception as exc:  # any broker error
            self._down_until = time.monotonic() + self.settings.sweep_interval
            log.warning("could not publish job %s (%s); it stays queued and will be published again", job_id, exc)
            return False
        self._down_until = 0.0
        return True

    def send_and_record(
        self, job_id: str, priority: int, resources: dict[str, Any] | None = None, *, force: bool = False
    ) -> bool:
        if not self.send(job_id, priority, resources, force=force):
            return False
        with session_scope(self.settings.database_url) as session:
            jobs.mark_published(session, job_id)
        return True

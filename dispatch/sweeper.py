"""Re-publishing: the job row is the record, the message only a wake-up call.

A job submitted while the broker was down, or whose worker died, sits in the database as
``queued``; the sweeper publishes it (again). Duplicates are harmless because a worker runs
a job only after claiming it with a conditional update, but they are not sent needlessly:
one sweeper at a time runs across all API processes (a Postgres advisory lock), and a job
whose message went out long ago is published again only when the queue is empty (its
message was lost with a restarted broker), not while messages wait for a busy worker.
"""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy import text
from sqlalchemy.orm import Session

from dispatch.broker import queue_size
from dispatch.publisher import Publisher
from dispatch.routing import Resources, job_queue
from store import jobs
from store.db import exclusive, is_transient, session_scope

log = logging.getLogger(__name__)


def sweep(publisher: Publisher, *, judge_lost: bool = True) -> dict[str, int] | None:
    """One pass; None when another process's sweeper holds the lock. ``judge_lost=False``: no
    running job is judged lost in this pass (the caller has just reconnected)."""
    settings = publisher.settings
    with exclusive(settings.database_url) as ours:
        if not ours:
            return None
        requeued = []
        with session_scope(settings.database_url) as session:
            if judge_lost and not _server_just_started(session, settings.heartbeat_timeout):
                requeued = jobs.requeue_lost(session, settings.heartbeat_timeout, settings.max_attempts)
        for job_id in requeued:
            log.warning("job %s lost its worker; re-queued", job_id)
        with session_scope(settings.database_url) as session:
            pending = jobs.unpublished_jobs(session, settings.republish_after)
        published = 0
        busy: dict[str, bool] = {}  # queue -> whether messages wait in it
        for job_id, priority, sent_before, resources in pending:
            if sent_before:
                queue = job_queue(settings.queue, Resources.from_stored(resources))
                if queue not in busy:
                    busy[queue] = _queue_busy(publisher, queue)
                if busy[queue]:
                    continue
            published += publisher.send_and_record(job_id, priority, resources, force=True)
    return {"requeued": len(requeued), "published": published}


def _server_just_started(session: Session, within: float) -> bool:
    """Postgres started less than ``within`` seconds ago (a restart, a fail-over). SQLite: never."""
    if session.get_bind().dialect.name != "postgresql":
        return False
    up = session.scalar(text("SELECT extract(epoch FROM now() - pg_postmaster_start_time())"))
    return float(up) < within


def _queue_busy(publisher: Publisher, queue: str) -> bool:
    """Messages wait in the job's queue: a job not taken yet is most likely among them."""
    try:
        return queue_size(publisher.app, publisher.settings, queue) > 0
    except Exception as exc:  # the broker is down: sending fails as well, and says so
        log.debug("could not read the queue's length: %s", exc)
        return False


class Sweeper:
    """Runs :func:`sweep` every ``settings.sweep_interval`` seconds in a daemon thread. After a
    pass fails (the database is away), it judges no worker lost until ``heartbeat_timeout``
    seconds after its next pass that reaches the database."""

    def __init__(self, publisher: Publisher):
        self.publisher, self.settings = publisher, publisher.settings
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cssl-sweeper", daemon=True)
        self._failing = False
        self._judge_from = 0.0  # time.monotonic() from which lost workers are judged again

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def sweep_once(self) -> dict[str, int] | None:
        """One pass of :func:`sweep`, which holds its judgement of lost workers after a reconnect."""
        judge_lost = not self._failing and time.monotonic() >= self._judge_from
        try:
            counts = sweep(self.publisher, judge_lost=judge_lost)
        except Exception:
            self._failing = True
            raise
        if self._failing:
            self._failing = False
            self._judge_from = time.monotonic() + self.settings.heartbeat_timeout
            log.info("the database is back; no worker is judged lost for %g s", self.settings.heartbeat_timeout)
        return counts

    def _loop(self) -> None:
        while True:
            failing = self._failing
            try:
                self.sweep_once()
            except Exception as exc:
                if is_transient(exc):  # the database is away: said once, not at every pass
                    if not failing:
                        log.warning(
                            "sweep failed, the database is unreachable; trying again every %ss",
                            self.settings.sweep_interval,
                        )
                else:
                    log.exception("sweep failed; trying again in %ss", self.settings.sweep_interval)
            if self._stop.wait(self.settings.sweep_interval):
                return

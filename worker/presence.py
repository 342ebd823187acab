"""A worker's row in the workers table (``store.workers``): what it offers, written when it
is ready and renewed every heartbeat interval in a daemon thread, removed when it stops."""

from __future__ import annotations

import logging
import threading

from dispatch.routing import Offer, Resources, fits
from store import jobs, workers
from store.db import session_scope
from store.settings import Settings

log = logging.getLogger(__name__)


class Presence:
    def __init__(self, settings: Settings, name: str, offer: Offer):
        self.settings, self.name, self.offer = settings, name, offer
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cssl-presence", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            with session_scope(self.settings.database_url) as session:
                workers.remove(session, self.name)
        except Exception as exc:  # it ages out of the live workers anyway
            log.warning("could not remove worker %s from the workers table: %s", self.name, exc)

    def _loop(self) -> None:
        registered, failing = False, False
        while True:
            try:
                with session_scope(self.settings.database_url) as session:
                    if not (registered and workers.beat(session, self.name)):
                        workers.register(session, self.name, self.offer.stored())
                        log.info("worker %s offers %s", self.name, self.offer.stored())
                registered, failing = True, False
            except Exception as exc:
                if not failing:  # said once, not at every beat
                    log.warning("worker %s could not write its heartbeat: %s", self.name, exc)
                failing = True
            if self._stop.wait(self.settings.heartbeat_interval):
                return


def declines(settings: Settings, offer: Offer, job_id: str) -> bool:
    """Whether this worker leaves the job to another: it asks for more memory than the worker
    offers (the queue's name holds no memory; ``dispatch.routing``). The message is dropped;
    where another live worker fits, the job is marked unpublished so that the sweeper sends it
    again at once, else it waits, saying why, until the sweeper's republishing."""
    if offer.memory_gib is None:  # the queue's name says the rest: every job on it fits
        return False
    try:
        return _declines(settings, offer, job_id)
    except Exception as exc:  # the runner's claim meets the database's trouble and handles it
        log.warning("could not read job %s's resources: %s", job_id, exc)
        return False


def _declines(settings: Settings, offer: Offer, job_id: str) -> bool:
    with session_scope(settings.database_url) as session:
        job = jobs.get_job(session, job_id)
        resources = Resources.from_stored(job.resources) if job is not None and job.status == "queued" else None
        if resources is None or fits(offer, resources):
            return False
        live = workers.live_workers(session, settings.heartbeat_timeout)
        if any(fits(Offer(tuple(w.queues), tuple(w.devices), w.memory_gib), resources) for w in live):
            jobs.mark_unpublished(session, job_id)
    log.info("job %s needs more memory than this worker offers (%s GiB); left queued", job_id, offer.memory_gib)
    return True

"""Celery tasks: thin adapters from a message to ``worker.runner``."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket

from billiard.process import active_children
from celery.exceptions import Reject
from celery.signals import worker_process_init, worker_ready, worker_shutting_down

from dispatch.broker import JOIN_JOB, RUN_JOB
from dispatch.publisher import Publisher
from dispatch.sweeper import sweep
from store.db import DatabaseUnavailable
from store.settings import get_settings
from worker import metrics, runner
from worker.app import OFFER, app
from worker.presence import Presence, declines

log = logging.getLogger(__name__)


@app.task(name=RUN_JOB, acks_late=True, reject_on_worker_lost=True)
def run_job(job_id: str) -> str | None:
    """The message carries only the job id; the job row holds everything else."""
    worker_name = run_job.request.hostname or socket.gethostname()
    try:
        if declines(get_settings(), OFFER, job_id):
            return None
        return runner.run_job(get_settings(), job_id, worker_name)
    except DatabaseUnavailable as exc:  # the claim could not be written: the job is still queued
        log.warning("%s; the message goes back to the queue", exc)
        raise Reject(str(exc), requeue=True) from exc


@app.task(name=JOIN_JOB, acks_late=False)
def join_job(job_id: str, attempt: int, node: int) -> str | None:
    """Node ``node`` of a job on several nodes. Acknowledged on receipt: a node lost with its
    worker ends the attempt, whose next one asks for its nodes again."""
    worker_name = join_job.request.hostname or socket.gethostname()
    try:
        return runner.join_job(get_settings(), job_id, attempt, node, worker_name)
    except DatabaseUnavailable as exc:  # the first node waits for this one in vain, then gives the job back
        log.warning("%s; not joining job %s", exc, job_id)
        return None


@worker_ready.connect
def _serve_metrics(**_) -> None:
    if port := get_settings().worker_metrics_port:
        metrics.serve(port)


PRESENCE: list[Presence] = []


@worker_ready.connect
def _offer(sender=None, **_) -> None:
    # What this worker takes, where the API reads it to say why a job waits.
    name = getattr(sender, "hostname", None) or socket.gethostname()
    PRESENCE.append(Presence(get_settings(), name, OFFER))
    PRESENCE[-1].start()


@worker_shutting_down.connect
def _withdraw_offer(**_) -> None:
    while PRESENCE:
        PRESENCE.pop().stop()


@worker_ready.connect
def _sweep_on_start(**_) -> None:
    # Jobs whose worker died, or that were submitted while no broker was up, go out again now.
    try:
        counts = sweep(Publisher(app, get_settings()))
        log.info("startup sweep: %s", counts)
    except Exception:
        log.exception("startup sweep failed")


# With --pool=prefork the jobs run in child processes, which a warm shutdown does not reach
# (the main process only waits for their tasks to end): the main process passes it on.
RELEASE_SIGNAL = signal.SIGUSR2


@worker_shutting_down.connect
def _release_running_job(**_) -> None:
    # The running job (if any) checkpoints at its next step and returns to the queue.
    runner.SHUTTING_DOWN.set()
    for child in active_children():
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, RELEASE_SIGNAL)


@worker_process_init.connect
def _release_on_signal(**_) -> None:
    signal.signal(RELEASE_SIGNAL, lambda *_: runner.SHUTTING_DOWN.set())

"""The worker's Celery app: ``celery -A worker.app worker``. It consumes the queues that fit
what the worker offers (CSSL_WORKER_QUEUES, CSSL_WORKER_DEVICES, CSSL_WORKER_MEMORY_GIB; see
``dispatch.routing``), and its jobs see only its GPUs."""

from __future__ import annotations

import os

from celery.signals import setup_logging

from dispatch.broker import make_celery
from dispatch.routing import Offer, worker_queues
from store import logs
from store.settings import SettingsError, get_settings

try:
    OFFER = Offer.parse(
        get_settings().worker_queues, get_settings().worker_devices, get_settings().worker_memory_gib or None
    )
except ValueError as exc:
    raise SettingsError(f"CSSL_WORKER_QUEUES/CSSL_WORKER_DEVICES: {exc}") from None
if OFFER.devices:
    # Before anything initialises CUDA: the jobs of this worker use these GPUs and no others.
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(OFFER.devices)

app = make_celery(get_settings(), include=("worker.tasks",), queues=worker_queues(get_settings().queue, OFFER))

if get_settings().log_format == "json":
    logs.configure("json")  # now: Celery warns (e.g. of running as root) before it sets logging up

    @setup_logging.connect
    def _json_lines(loglevel=None, **_) -> None:
        # Connected, this replaces Celery's own logging set-up.
        logs.configure("json", loglevel or "INFO")

"""The worker's Celery app: ``celery -A worker.app worker``."""

from __future__ import annotations

from celery.signals import setup_logging

from dispatch.broker import make_celery
from store import logs
from store.settings import get_settings

app = make_celery(get_settings(), include=("worker.tasks",))

if get_settings().log_format == "json":
    logs.configure("json")  # now: Celery warns (e.g. of running as root) before it sets logging up

    @setup_logging.connect
    def _json_lines(loglevel=None, **_) -> None:
        # Connected, this replaces Celery's own logging set-up.
        logs.configure("json", loglevel or "INFO")

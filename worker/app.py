"""The worker's Celery app: ``celery -A worker.app worker``."""

from __future__ import annotations

from dispatch.broker import make_celery
from store.settings import get_settings

app = make_celery(get_settings(), include=("worker.tasks",))

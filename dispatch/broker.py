"""The Celery app's configuration, shared by the API and the worker, and what can be read or
cleared of the queue. Importing this module loads no model code and no task, so the API can
publish (``dispatch.publisher``) without importing the worker."""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from store.settings import Settings

RUN_JOB = "cssl.run_job"
# A job on several nodes: "run your ranks as node k of this attempt" (``worker.runner.join_job``).
JOIN_JOB = "cssl.join_job"
# API priorities run 0 (lowest) to 9 (highest); Redis serves its priority 0 first.
MAX_PRIORITY = 9


def make_celery(settings: Settings, include: tuple[str, ...] = (), queues: list[str] | None = None) -> Celery:
    """The app as both sides configure it; the worker passes its task modules in ``include``
    and the queues it consumes in ``queues`` (default: the queue of jobs without resources)."""
    app = Celery("cssl", broker=settings.broker_url, include=list(include))
    if queues and queues != [settings.queue]:
        app.conf.task_queues = [Queue(name, routing_key=name) for name in queues]
    app.conf.update(
        # The job row is the record; Celery only carries the job id and keeps no results.
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=settings.queue,
        # A message is acknowledged when the task returns, and put back if the worker dies;
        # the claim in store.jobs makes a second delivery a no-op.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=3,
        broker_transport_options=_transport_options(settings),
    )
    if settings.broker_url.startswith("filesystem://"):
        app.conf.broker_transport = "dispatch.fsqueue:Transport"  # serves by priority
    return app


def _transport_options(settings: Settings) -> dict:
    if settings.broker_url.startswith("filesystem://"):
        folder = settings.queue_folder
        for name in ("messages", "processed", "control"):
            (folder / name).mkdir(parents=True, exist_ok=True)
        return {
            "data_folder_in": str(folder / "messages"),
            "data_folder_out": str(folder / "messages"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),
            "store_processed": False,
            "polling_interval": 0.2,
        }
    if settings.broker_url.startswith(("redis://", "rediss://")):
        return {
            "priority_steps": list(range(MAX_PRIORITY + 1)),
            "sep": ":",
            "queue_order_strategy": "priority",
            # Training runs for hours; the heartbeat, not redelivery, detects a lost worker.
            "visibility_timeout": 24 * 3600,
        }
    return {}


def queue_size(app: Celery, settings: Settings, queue: str | None = None) -> int:
    """Messages waiting in a job queue (default: the queue of jobs without resources; every
    priority level); raises when the broker is down."""
    from kombu.exceptions import ChannelError

    with app.connection_for_write() as connection:
        try:
            return connection.default_channel.queue_declare(queue=queue or settings.queue, passive=True).message_count
        except ChannelError as exc:
            if "NOT_FOUND" in str(exc):  # nothing was ever sent to it: an empty queue
                return 0
            raise


def delete_queue(broker_url: str, queue: str) -> None:
    """Removes every key of a Redis queue (all priority levels, unacknowledged messages): the
    clean-up of a scratch queue in tests and benchmarks. Other brokers: nothing."""
    if not broker_url.startswith(("redis://", "rediss://")):
        return
    import redis

    broker = redis.Redis.from_url(broker_url)
    for key in broker.scan_iter(f"*{queue}*"):
        broker.delete(key)

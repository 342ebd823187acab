"""Priorities on both brokers: of the jobs waiting in a queue, the highest API priority is
handed out first, and jobs of one priority in the order they were sent. Read straight from
the broker (no worker), on a scratch queue."""

from __future__ import annotations

import pytest

from dispatch.broker import delete_queue, make_celery
from dispatch.publisher import publish

from .support import REDIS_URL, SERVICE_ENV, needs_servers

# (job id, API priority) in the order they are sent.
SENT = [("low", 0), ("first-five", 5), ("top", 9), ("second-five", 5), ("six", 6)]
SERVED = ["top", "six", "first-five", "second-five", "low"]


def served(settings, queue: str, resources=None) -> list[str]:
    settings = settings.with_(queue=queue)
    app = make_celery(settings)
    for job_id, priority in SENT:
        publish(app, settings, job_id, priority, resources)
    out = []
    with app.connection_for_read() as connection:
        channel = connection.default_channel
        name = settings.queue if resources is None else f"{settings.queue}.gpu.{resources['devices']}"
        while (message := channel.basic_get(name, no_ack=True)) is not None:
            out.append(message.payload[0][0])  # the task's first argument: the job id
    return out


def test_the_embedded_queue_serves_by_priority(settings, tmp_path):
    settings = settings.with_(broker_url="filesystem://", state_dir=tmp_path)
    assert served(settings, "cssl") == SERVED
    assert served(settings, "cssl", {"device": "gpu", "devices": 2, "nodes": 1}) == SERVED


@needs_servers("Redis's priority queues")
@pytest.mark.parametrize("resources", [None, {"device": "gpu", "devices": 2, "nodes": 1}])
def test_redis_serves_by_priority(settings, resources):
    queue = SERVICE_ENV["CSSL_QUEUE"] + "_priorities"
    try:
        assert served(settings, queue, resources) == SERVED
    finally:
        delete_queue(REDIS_URL, queue)

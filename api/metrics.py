"""``GET /metrics``: the service in the Prometheus text format (prometheus-client).

Two kinds of figures:

- The API's own HTTP traffic, counted by a middleware: requests by method, route (the path
  template, so one series per route, not per job id) and status, and their latency. Where the API
  runs as several processes (``uvicorn --workers N``), set ``PROMETHEUS_MULTIPROC_DIR`` to an empty
  folder shared by them: each process writes its counts there and a scrape of any one adds them up.
- The state of the service, read from the database and the broker at each scrape, so every API
  process answers the same: jobs by status, queue depth and the age of the oldest queued job,
  each running job's progress (step, loss, images/s, step time, GPU memory), and the workers
  heard from (the heartbeats of the jobs they run).

README.md ("Watch the service") lists every metric.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from datetime import datetime

from fastapi import APIRouter, Request, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import func, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dispatch.broker import queue_size
from dispatch.routing import Offer, Resources, job_queue, worker_queues
from store.models import Job, utcnow
from store.workers import live_workers

log = logging.getLogger(__name__)

disable_created_metrics()  # no *_created series: a timestamp per label set that no dashboard reads

# Every request is counted in this registry; a scrape adds the state read at that moment.
HTTP_REGISTRY = CollectorRegistry(auto_describe=True)
REQUESTS = Counter(
    "cssl_http_requests",
    "HTTP requests answered, by method, route template and status code",
    ["method", "route", "status"],
    registry=HTTP_REGISTRY,
)
LATENCY = Histogram(
    "cssl_http_request_duration_seconds",
    "Time from a request's arrival to its last response byte, by method and route template",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
    registry=HTTP_REGISTRY,
)

router = APIRouter(tags=["health"])


class RequestMetrics:
    """Pure ASGI middleware: counts each HTTP response and times it to its last byte."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def counting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            REQUESTS.labels(scope["method"], template, str(status)).inc()
            LATENCY.labels(scope["method"], template).observe(time.perf_counter() - start)


class ServiceState:
    """A collector that reads jobs, queue and workers at scrape time."""

    def __init__(self, request: Request):
        self.state = request.app.state

    def collect(self) -> Iterator[Metric]:
        settings = self.state.settings
        # The default queue, and those of the queued jobs and the live workers (dispatch.routing).
        self.queues = {settings.queue}
        up = GaugeMetricFamily("cssl_up", "1 when the scrape could read the database, 0 when not", labels=["source"])
        try:
            yield from self._database(settings)
            up.add_metric(["database"], 1)
        except Exception as exc:
            log.warning("metrics: the database could not be read: %s: %s", type(exc).__name__, exc)
            up.add_metric(["database"], 0)
        depth = GaugeMetricFamily("cssl_queue_messages", "Messages waiting in the broker's queue", labels=["queue"])
        try:
            for queue in sorted(self.queues):
                depth.add_metric([queue], queue_size(self.state.celery, settings, queue))
            up.add_metric(["broker"], 1)
            yield depth
        except Exception as exc:
            log.warning("metrics: the broker could not be read: %s: %s", type(exc).__name__, exc)
            up.add_metric(["broker"], 0)
        yield up

    def _database(self, settings) -> Iterator[Metric]:
        now = utcnow()
        with self.state.read_sessions() as session:
            by_status = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
            queued = session.execute(
                select(Job.resources, func.min(Job.created_at)).where(Job.status == "queued").group_by(Job.resources)
            ).all()
            live = live_workers(session, settings.heartbeat_timeout)
            running = session.execute(
                select(Job.id, Job.method, Job.worker, Job.config, Job.progress, Job.heartbeat_at).where(
                    Job.status == "running"
                )
            ).all()

        jobs = GaugeMetricFamily("cssl_jobs", "Jobs by status", labels=["status"])
        for status in ("queued", "running", "succeeded", "failed", "cancelled"):
            jobs.add_metric([status], by_status.get(status, 0))
        yield jobs
        age = GaugeMetricFamily(
            "cssl_queue_oldest_job_age_seconds", "Age of the oldest queued job (0: none queued)", labels=["queue"]
        )
        oldest: dict[str, datetime] = {}
        for resources, created in queued:
            queue = job_queue(settings.queue, Resources.from_stored(resources))
            oldest[queue] = min(_aware(created, now), oldest.get(queue, _aware(created, now)))
        offers = [Offer(tuple(w.queues), tuple(w.devices), w.memory_gib) for w in live]
        self.queues |= set(oldest) | {q for offer in offers for q in worker_queues(settings.queue, offer)}
        for queue in sorted(self.queues):
            age.add_metric([queue], (now - oldest[queue]).total_seconds() if queue in oldest else 0.0)
        yield age
        registered = GaugeMetricFamily("cssl_workers", "Running workers by the kind of jobs they take", labels=["kind"])
        kinds = sorted({kind for offer in offers for kind in offer.kinds})
        for kind in kinds:
            registered.add_metric([kind], sum(kind in offer.kinds for offer in offers))
        yield registered

        labels = ["job", "method", "worker"]
        families = {
            "step": GaugeMetricFamily("cssl_job_step", "Optimiser steps done by a running job", labels=labels),
            "total_steps": GaugeMetricFamily("cssl_job_total_steps", "Steps a running job plans", labels=labels),
            "loss": GaugeMetricFamily("cssl_job_loss", "A running job's latest mean training loss", labels=labels),
            "images_per_second": GaugeMetricFamily(
                "cssl_job_images_per_second", "A running job's training throughput", labels=labels
            ),
            "step_seconds": GaugeMetricFamily(
                "cssl_job_step_seconds", "A running job's time per optimiser step", labels=labels
            ),
            "gpu_memory_bytes": GaugeMetricFamily(
                "cssl_job_gpu_memory_bytes", "Peak GPU memory a running job's process allocated", labels=labels
            ),
        }
        heartbeat = GaugeMetricFamily(
            "cssl_worker_heartbeat_age_seconds",
            "Seconds since a worker's running job last heartbeat (one series per worker with a job)",
            labels=["worker"],
        )
        workers: dict[str, float] = {}
        for job_id, method, worker, config, progress, beat in running:
            worker = worker or "unknown"
            if beat is not None:
                seconds = (now - _aware(beat, now)).total_seconds()
                workers[worker] = min(seconds, workers.get(worker, seconds))
            progress = progress or {}
            values = {name: progress.get(name) for name in families}
            speed, batch = progress.get("images_per_second"), (config or {}).get("batch_size")
            if speed and batch:
                values["step_seconds"] = batch / speed
            for name, value in values.items():
                if isinstance(value, int | float):
                    families[name].add_metric([job_id, method, worker], float(value))
        yield from families.values()
        for worker, seconds in sorted(workers.items()):
            heartbeat.add_metric([worker], seconds)
        yield heartbeat
        live = GaugeMetricFamily(
            "cssl_workers_busy",
            "Workers whose running job heartbeat within the heartbeat timeout (idle workers are not seen here)",
        )
        live.add_metric([], sum(seconds <= settings.heartbeat_timeout for seconds in workers.values()))
        yield live


def _aware(moment, now):
    """SQLite gives naive UTC datetimes; Postgres aware ones."""
    return moment.replace(tzinfo=now.tzinfo) if moment.tzinfo is None else moment


@router.get("/metrics", summary="Prometheus metrics (text format)", response_class=PlainTextResponse)
def metrics(request: Request) -> Response:
    registry = CollectorRegistry(auto_describe=False)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)  # every API process's request counts, from the shared folder
    else:
        for collector in (REQUESTS, LATENCY):
            registry.register(collector)
    registry.register(ServiceState(request))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

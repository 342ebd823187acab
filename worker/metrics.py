"""A worker's own Prometheus metrics, on its own port (``CSSL_WORKER_METRICS_PORT``; 0: off).

The API's ``/metrics`` tells the service's state from the database (jobs by status, the queue,
each running job's last progress); a worker tells what only it sees as it happens: the jobs it
ran and how they ended, how long they took, and the step, loss and throughput of the one it runs
now. With ``--concurrency`` above 1 the jobs run in child processes: set
``PROMETHEUS_MULTIPROC_DIR`` (an empty folder per worker) and the figures of every child are
served together.
"""

from __future__ import annotations

import contextlib
import logging
import os

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector

log = logging.getLogger(__name__)

# Minutes to days: a job is a short evaluation or a long pretraining run.
JOB_SECONDS_BUCKETS = (10, 30, 60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 24 * 3600, 72 * 3600)

JOBS = Counter("cssl_worker_jobs", "Jobs this worker ran, by kind and how the attempt ended", ["kind", "outcome"])
JOB_SECONDS = Histogram(
    "cssl_worker_job_seconds", "Wall time of this worker's job attempts", ["kind"], buckets=JOB_SECONDS_BUCKETS
)
BUSY = Gauge("cssl_worker_busy", "Jobs this worker is running now", multiprocess_mode="livesum")
_JOB = ["job", "method"]
STEP = Gauge("cssl_worker_job_step", "The running job's optimiser step", _JOB, multiprocess_mode="liveall")
LOSS = Gauge("cssl_worker_job_loss", "The running job's latest mean loss", _JOB, multiprocess_mode="liveall")
SPEED = Gauge(
    "cssl_worker_job_images_per_second", "The running job's training throughput", _JOB, multiprocess_mode="liveall"
)
_PER_JOB = {"step": STEP, "loss": LOSS, "images_per_second": SPEED}


def serve(port: int) -> None:
    """Serve the metrics on ``port`` (all interfaces: Prometheus scrapes the worker's host)."""
    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    start_http_server(port, registry=registry)
    log.info("worker metrics on port %d", port)


def job_started(job_id: str, method: str) -> None:
    BUSY.inc()
    for gauge in _PER_JOB.values():
        gauge.labels(job_id, method).set(0)


def job_progress(job_id: str, method: str, values: dict) -> None:
    for name, gauge in _PER_JOB.items():
        value = values.get(name)
        if isinstance(value, int | float):
            gauge.labels(job_id, method).set(value)


def job_ended(job_id: str, method: str, kind: str, outcome: str, seconds: float) -> None:
    """``outcome``: succeeded, failed, cancelled, released (back to the queue), retried (a rank lost) or lost."""
    BUSY.dec()
    JOBS.labels(kind, outcome).inc()
    JOB_SECONDS.labels(kind).observe(seconds)
    for gauge in _PER_JOB.values():
        with contextlib.suppress(KeyError):  # a job that ended has no series
            gauge.remove(job_id, method)

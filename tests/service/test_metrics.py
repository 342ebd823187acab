"""GET /metrics read with Prometheus's own text parser: the figures move as a job is queued,
runs and ends, and several API processes count their requests together."""

from __future__ import annotations

import os

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from store.db import session_scope
from store.models import Job, utcnow

from .support import TINY, needs_servers, start_api, wait_for

QUEUE = os.environ["CSSL_QUEUE"]  # set by support for every process of the service under test


def scrape(base: str, path: str = "/metrics") -> dict[tuple[str, frozenset], float]:
    response = httpx.get(f"{base}{path}", timeout=30)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(figures, name: str, **labels) -> float | None:
    return figures.get((name, frozenset(labels.items())))


def job_figures(figures, job_id: str) -> dict[str, float]:
    return {name: v for (name, labels), v in figures.items() if ("job", job_id) in labels}


def submit(base, headers, config) -> str:
    body = {"kind": "pretrain", "method": "simclr", "dataset": {"name": "synthetic"}, "config": config}
    response = httpx.post(f"{base}/v1/jobs", json=body, headers=headers)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def status(base, headers, job_id) -> str:
    return httpx.get(f"{base}/v1/jobs/{job_id}", headers=headers).json()["status"]


@needs_servers("the queue depth is read from Redis")
def test_figures_follow_a_job_through_queue_run_and_end(server, worker, alice, settings):
    before = scrape(server)
    assert value(before, "cssl_up", source="database") == 1 and value(before, "cssl_up", source="broker") == 1
    posted = value(before, "cssl_http_requests_total", method="POST", route="/v1/jobs", status="202") or 0

    long_run = submit(server, alice, {**TINY, "epochs": 100_000, "time_budget": 120})
    wait_for(lambda: status(server, alice, long_run) == "running", 60, message="the job to run")
    # While it runs, a second job waits behind it in the queue (one worker, one job at a time).
    waiting = submit(server, alice, {**TINY})

    def stepping():
        figures = scrape(server)
        return figures if (job_figures(figures, long_run).get("cssl_job_step") or 0) >= 3 else None

    running = wait_for(stepping, 60, message="the running job's step in /metrics")
    job = job_figures(running, long_run)
    assert job["cssl_job_total_steps"] >= job["cssl_job_step"] and job["cssl_job_loss"] > 0
    assert job["cssl_job_images_per_second"] > 0 and job["cssl_job_step_seconds"] > 0
    assert value(running, "cssl_jobs", status="running") >= 1
    assert value(running, "cssl_jobs", status="queued") >= 1
    assert value(running, "cssl_queue_oldest_job_age_seconds", queue=QUEUE) > 0
    assert value(running, "cssl_queue_messages", queue=QUEUE) >= 1
    assert value(running, "cssl_workers_busy") >= 1
    assert any(name == "cssl_worker_heartbeat_age_seconds" and v < 5 for (name, _), v in running.items())
    assert value(running, "cssl_http_requests_total", method="POST", route="/v1/jobs", status="202") == posted + 2
    assert value(running, "cssl_http_request_duration_seconds_count", method="POST", route="/v1/jobs") >= 2

    httpx.post(f"{server}/v1/jobs/{long_run}/cancel", headers=alice)
    wait_for(lambda: status(server, alice, waiting) == "succeeded", 120, message="the queued job to run")
    after = scrape(server)
    assert job_figures(after, long_run) == {}  # a job that ended has no series
    assert value(after, "cssl_jobs", status="succeeded") == value(before, "cssl_jobs", status="succeeded") + 1
    assert value(after, "cssl_jobs", status="cancelled") == value(before, "cssl_jobs", status="cancelled") + 1
    # Other modules leave jobs queued in the shared database (some backdated a year); ours are
    # gone from the figure, which now follows the oldest of those, or is 0 when there are none.
    with session_scope(settings.database_url) as session:
        left = session.scalar(select(func.min(Job.created_at)).where(Job.status == "queued"))
    expected = 0.0 if left is None else (utcnow() - left.replace(tzinfo=left.tzinfo or utcnow().tzinfo)).total_seconds()
    assert abs(value(after, "cssl_queue_oldest_job_age_seconds", queue=QUEUE) - expected) < 30


def answered(folder) -> set[int]:
    """The processes that counted something: multiprocess mode writes a file per process id."""
    return {int(path.stem.rsplit("_", 1)[-1]) for path in folder.glob("*.db")}


def test_several_api_processes_count_their_requests_together(service_env, tmp_path):
    folder = tmp_path / "prometheus"
    folder.mkdir()
    env = {**service_env, "PROMETHEUS_MULTIPROC_DIR": str(folder), "CSSL_SWEEP_INTERVAL": "3600"}
    process, base = start_api(env, tmp_path / "api.log", processes=2)
    try:
        healthz = {"method": "GET", "route": "/healthz", "status": "200"}
        started = value(scrape(base), "cssl_http_requests_total", **healthz)  # start_api asked once
        # One connection per request, until both processes have answered some: the kernel hands
        # connections to whichever process accepts first, so under load one may take many in a row.
        sent = 0
        with httpx.Client() as client:
            while sent < 40 or (len(answered(folder)) < 2 and sent < 2000):
                assert client.get(f"{base}/healthz", headers={"Connection": "close"}).status_code == 200
                sent += 1
        assert len(answered(folder)) == 2, f"both processes answered: {sorted(folder.iterdir())}"
        # Whichever process answers the scrape, it adds up both processes' counts.
        for _ in range(4):
            figures = scrape(base)
            assert value(figures, "cssl_http_requests_total", **healthz) == started + sent
    finally:
        process.stop()


@needs_servers("the worker takes its job from a Redis queue of its own")
def test_a_worker_serves_its_own_figures(service_env, tokens, tmp_path):
    from .support import auth, free_port, start_worker

    port = free_port()
    env = {**service_env, "CSSL_QUEUE": f"{QUEUE}_own_metrics", "CSSL_WORKER_METRICS_PORT": str(port)}
    api, base = start_api(env, tmp_path / "api.log")
    worker = start_worker(env, tmp_path / "worker.log", "metered")
    alice = auth(tokens["alice"])
    try:
        idle = scrape(f"http://127.0.0.1:{port}", path="")
        assert value(idle, "cssl_worker_busy") == 0
        job = submit(base, alice, {**TINY, "epochs": 100_000, "time_budget": 120})

        def stepping():
            figures = scrape(f"http://127.0.0.1:{port}", path="")
            return figures if (job_figures(figures, job).get("cssl_worker_job_step") or 0) >= 2 else None

        running = wait_for(stepping, 90, message="the worker's figures of its running job")
        assert value(running, "cssl_worker_busy") == 1
        assert job_figures(running, job)["cssl_worker_job_loss"] > 0
        assert job_figures(running, job)["cssl_worker_job_images_per_second"] > 0
        httpx.post(f"{base}/v1/jobs/{job}/cancel", headers=alice)
        wait_for(lambda: status(base, alice, job) == "cancelled", 60, message="the job to stop")
        done = wait_for(
            lambda: (f := scrape(f"http://127.0.0.1:{port}", path="")) and value(f, "cssl_worker_busy") == 0 and f,
            30,
            message="the worker to be idle",
        )
        assert value(done, "cssl_worker_jobs_total", kind="pretrain", outcome="cancelled") == 1
        assert value(done, "cssl_worker_job_seconds_count", kind="pretrain") == 1
        assert job_figures(done, job) == {}
    finally:
        worker.stop()
        api.stop()

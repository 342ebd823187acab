"""A fleet: two real Celery workers on Redis that offer different resources, behind a real API
on a scratch queue. Each job lands on a worker that fits it, a job that fits none says why it
waits, and a job does not wait while a worker that fits it is idle."""

from __future__ import annotations

import signal

import httpx
import pytest

from .support import SERVICE_ENV, TINY, needs_servers, start_api, start_worker, wait_for
from .test_metrics import scrape, value

pytestmark = needs_servers("two workers sharing Redis queues")

GPU = {"device": "gpu", "devices": 1}


@pytest.fixture(scope="module")
def fleet(service_env, tmp_path_factory):
    """The API and two workers: ``small`` (CPU jobs and 1-GPU jobs, GPU 0) and ``big`` (GPU jobs
    of up to 2 GPUs, GPUs 0 and 1), on a queue of this module's own."""
    from dispatch.broker import delete_queue

    env = {**service_env, "CSSL_QUEUE": SERVICE_ENV["CSSL_QUEUE"] + "_fleet"}
    logs = tmp_path_factory.mktemp("fleet")
    api, base = start_api(env, logs / "api.log")
    small = start_worker(
        {**env, "CSSL_WORKER_QUEUES": "cpu,gpu", "CSSL_WORKER_DEVICES": "0"}, logs / "small.log", "small"
    )
    big = start_worker(
        {**env, "CSSL_WORKER_QUEUES": "gpu", "CSSL_WORKER_DEVICES": "0,1", "CSSL_WORKER_MEMORY_GIB": "64"},
        logs / "big.log",
        "big",
    )
    yield base
    for worker in (small, big):
        worker.stop(signal.SIGQUIT)
    api.stop()
    delete_queue(env["CSSL_BROKER_URL"], env["CSSL_QUEUE"])


def submit(base, headers, resources, **config):
    body = {
        "method": "simclr",
        "dataset": {"name": "synthetic"},
        "config": {**TINY, **config},
        "evaluate": [],
        "resources": resources,
    }
    response = httpx.post(f"{base}/v1/jobs", json=body, headers=headers, timeout=30)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def job(base, headers, job_id):
    response = httpx.get(f"{base}/v1/jobs/{job_id}", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def finished(base, headers, job_id, timeout=240):
    done = wait_for(
        lambda: (j := job(base, headers, job_id))["status"] in ("succeeded", "failed") and j,
        timeout,
        message=f"job {job_id} to finish",
    )
    assert done["status"] == "succeeded", done["error"]
    return done


def test_each_job_runs_on_a_worker_that_fits_it(fleet, alice):
    # Only big has two GPUs; a longer job, so that it still runs when the next one comes.
    two = submit(fleet, alice, {"device": "gpu", "devices": 2}, epochs=4, subset=256)
    assert job(fleet, alice, two)["waiting_reason"] is None  # a worker that fits it is running
    wait_for(lambda: job(fleet, alice, two)["status"] != "queued", 60, message="the 2-GPU job to start")
    # big is busy: the 1-GPU job goes to small, now, rather than waiting for big.
    one = submit(fleet, alice, GPU)
    cpu = submit(fleet, alice, {"device": "cpu"}, device="cpu")

    two, one, cpu = (finished(fleet, alice, job_id) for job_id in (two, one, cpu))
    assert two["worker"].startswith("big@")
    assert two["resources"] == {"device": "gpu", "devices": 2, "nodes": 1, "memory_gib": None, "pool": None}
    assert one["worker"].startswith("small@") and cpu["worker"].startswith("small@")
    assert one["timings"]["started_at"] < two["timings"]["finished_at"], "the 1-GPU job waited for the busy worker"


def test_a_job_no_worker_fits_says_why_it_waits(fleet, alice):
    reasons = {
        "waiting for a worker with 4 GPUs; none of the 2 running workers fits": {"device": "gpu", "devices": 4},
        "waiting for a worker with 1 GPU in pool a100; none of the 2 running workers fits": {**GPU, "pool": "a100"},
        "waiting for a worker with 2 GPUs and 128 GiB of memory; none of the 2 running workers fits": {
            "device": "gpu",
            "devices": 2,
            "memory_gib": 128,
        },
        "waiting for a worker that takes jobs without resources (started without --queues, or with default "
        "among them); none of the 2 running workers fits": None,
    }
    waiting = []
    for reason, resources in reasons.items():
        job_id = submit(fleet, alice, resources)
        seen = job(fleet, alice, job_id)
        assert (seen["status"], seen["waiting_reason"]) == ("queued", reason)
        waiting.append(job_id)
    # Prometheus sees each queue: the 4-GPU job's message waits in its own, and the workers by kind.
    queue = SERVICE_ENV["CSSL_QUEUE"] + "_fleet"
    figures = scrape(fleet)
    assert value(figures, "cssl_queue_messages", queue=f"{queue}.gpu.4") == 1
    assert value(figures, "cssl_queue_oldest_job_age_seconds", queue=f"{queue}.gpu.4") > 0
    assert value(figures, "cssl_workers", kind="gpu") == 2 and value(figures, "cssl_workers", kind="cpu") == 1
    for job_id in waiting:
        httpx.post(f"{fleet}/v1/jobs/{job_id}/cancel", headers=alice, timeout=30)
    # 2 GPUs and 64 GiB: big fits.
    fits = submit(fleet, alice, {"device": "gpu", "devices": 2, "memory_gib": 64})
    assert job(fleet, alice, fits)["waiting_reason"] is None
    assert finished(fleet, alice, fits)["worker"].startswith("big@")

"""Fair sharing between owners: priorities above the default are an admin's, a job runs for at
most the maximum run time, an owner's queued jobs are capped, and the rate limits (submissions,
failed authentications, open event streams) hold across API processes that share one Redis."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event

from dispatch.broker import delete_queue

from .support import REDIS_URL, TINY, auth, needs_servers, start_api, start_worker, wait_for

JOB = {"kind": "pretrain", "method": "simclr", "dataset": {"name": "synthetic"}, "config": TINY, "evaluate": []}


def fresh_queue(settings) -> str:
    """A queue, and so a rate-limit namespace, of the test's own."""
    return f"{settings.queue}_{uuid.uuid4().hex[:8]}"


@pytest.fixture()
def app_with(settings):
    """An in-process API on a queue of its own (no worker reads it) with the given settings."""
    from api.main import create_app

    opened = []

    def make(**changes) -> TestClient:
        client = TestClient(create_app(settings.with_(queue=fresh_queue(settings), **changes), sweep=False))
        opened.append(client.__enter__())
        return client

    yield make
    for client in opened:
        client.__exit__(None, None, None)


def new_token(settings, owner: str, admin: bool = False) -> dict[str, str]:
    from store import tokens
    from store.db import session_scope

    with session_scope(settings.database_url) as session:
        return auth(tokens.create_token(session, owner, admin=admin))


def assert_too_many(response, limit: str) -> dict:
    assert response.status_code == 429, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["limit"] == limit and limit in problem["detail"], problem
    return problem


def test_priorities_above_the_default_need_an_admin_token(app_with, settings):
    client = app_with()
    user, admin = new_token(settings, "pat"), new_token(settings, "pat", admin=True)
    refused = client.post("/v1/jobs", json={**JOB, "priority": 9}, headers=user)
    assert refused.status_code == 403, refused.text
    assert "--admin" in refused.json()["detail"] and refused.json()["errors"][0]["loc"] == ["body", "priority"]
    assert client.post("/v1/jobs", json={**JOB, "priority": 6}, headers=user).status_code == 403
    assert client.post("/v1/jobs", json={**JOB, "priority": 5}, headers=user).status_code == 202
    accepted = client.post("/v1/jobs", json={**JOB, "priority": 9}, headers=admin)
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["priority"] == 9
    # Both of pat's tokens act for one owner.
    assert len(client.get("/v1/jobs", headers=user).json()["items"]) == 2


def test_the_maximum_run_time_caps_a_job_without_a_budget_and_refuses_a_longer_one(app_with, settings):
    client = app_with(max_run_seconds=600)
    alice = new_token(settings, "alice")
    longer = client.post("/v1/jobs", json={**JOB, "config": {**TINY, "time_budget": 601}}, headers=alice)
    assert longer.status_code == 422, longer.text
    error = longer.json()["errors"][0]
    assert error["loc"] == ["body", "config", "time_budget"] and "600" in error["msg"]
    assert "CSSL_MAX_RUN_SECONDS" in error["msg"]
    capped = client.post("/v1/jobs", json=JOB, headers=alice)
    assert capped.status_code == 202 and capped.json()["config"]["time_budget"] == 600
    shorter = client.post("/v1/jobs", json={**JOB, "config": {**TINY, "time_budget": 30}}, headers=alice)
    assert shorter.json()["config"]["time_budget"] == 30
    unlimited = app_with(max_run_seconds=0).post("/v1/jobs", json=JOB, headers=alice)
    assert unlimited.json()["config"]["time_budget"] is None


def test_an_owner_may_queue_only_so_many_jobs(app_with, settings):
    client = app_with(max_queued_jobs=2)
    quinn, other = new_token(settings, "quinn"), new_token(settings, "ursula")
    first = [client.post("/v1/jobs", json=JOB, headers=quinn) for _ in range(2)]
    assert [r.status_code for r in first] == [202, 202]
    problem = assert_too_many(client.post("/v1/jobs", json=JOB, headers=quinn), "CSSL_MAX_QUEUED_JOBS")
    assert (
        "has 2" in problem["detail"] and "Retry-After" not in client.post("/v1/jobs", json=JOB, headers=quinn).headers
    )
    # Another owner is not held back, and a cancelled job frees a place.
    assert client.post("/v1/jobs", json=JOB, headers=other).status_code == 202
    client.post(f"/v1/jobs/{first[0].json()['id']}/cancel", headers=quinn)
    assert client.post("/v1/jobs", json=JOB, headers=quinn).status_code == 202


def test_failed_authentications_are_limited_per_address(app_with, settings):
    client = app_with(auth_failures_per_minute=3)
    valid = new_token(settings, "vera")
    for _ in range(3):
        assert client.get("/v1/jobs", headers=auth(f"cssl_wrong{uuid.uuid4().hex}")).status_code == 401
    problem = assert_too_many(client.get("/v1/jobs", headers=auth("cssl_wrong")), "CSSL_AUTH_FAILURES_PER_MINUTE")
    assert 1 <= problem["retry_after"] <= 60
    # Refused before the token is looked up: a guess that happens to be right learns nothing.
    refused = client.get("/v1/jobs", headers=valid)
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) == refused.json()["retry_after"]
    # The counters are per client address.
    elsewhere = TestClient(client.app, client=("192.0.2.7", 50000))
    assert elsewhere.get("/v1/jobs", headers=valid).status_code == 200


def test_unknown_tokens_are_cached_but_a_new_token_works_at_once(app_with, settings):
    from store import tokens
    from store.db import engine_for, session_scope

    client = app_with()
    statements = []

    def count(conn, cursor, statement, *args):
        if "api_tokens" in statement:
            statements.append(statement)

    engine = engine_for(settings.database_url)
    event.listen(engine, "before_cursor_execute", count)
    try:
        bad = auth("cssl_" + uuid.uuid4().hex)
        assert [client.get("/v1/jobs", headers=bad).status_code for _ in range(5)] == [401] * 5
        assert len(statements) == 1, statements
        with session_scope(settings.database_url) as session:
            token = tokens.create_token(session, "nina")
        assert client.get("/v1/jobs", headers=auth(token)).status_code == 200
    finally:
        event.remove(engine, "before_cursor_execute", count)


@pytest.fixture(scope="module")
def two_apis(service_env, settings, tmp_path_factory):
    """Two uvicorn processes on one Redis and one queue that no worker reads, with a burst of 3
    submissions per 30 s and 2 event streams per owner."""
    queue = fresh_queue(settings)
    env = {
        **service_env,
        "CSSL_QUEUE": queue,
        "CSSL_SUBMIT_RATE": "6",
        "CSSL_SUBMIT_BURST": "3",
        "CSSL_MAX_EVENT_STREAMS": "2",
    }
    with ThreadPoolExecutor(2) as pool:  # side by side: each takes a while to import on a busy machine
        started = [
            pool.submit(start_api, env, tmp_path_factory.mktemp("api") / f"{name}.log", timeout=240) for name in "ab"
        ]
    (a, base_a), (b, base_b) = (future.result() for future in started)
    yield base_a, base_b
    a.stop()
    b.stop()
    delete_queue(REDIS_URL, queue)


@needs_servers("two API processes that share Redis")
def test_two_api_processes_share_one_submission_budget(two_apis, settings):
    base_a, base_b = two_apis
    ola = new_token(settings, "ola")
    codes = [httpx.post(f"{base}/v1/jobs", json=JOB, headers=ola).status_code for base in (base_a, base_b, base_a)]
    assert codes == [202, 202, 202]
    refused = httpx.post(f"{base_b}/v1/jobs", json=JOB, headers=ola)
    problem = assert_too_many(refused, "CSSL_SUBMIT_RATE")
    assert 1 <= int(refused.headers["retry-after"]) <= 30 and problem["retry_after"] == int(
        refused.headers["retry-after"]
    )
    assert httpx.post(f"{base_a}/v1/jobs", json=JOB, headers=new_token(settings, "pia")).status_code == 202


@needs_servers("two API processes that share Redis")
def test_event_streams_per_owner_are_capped_across_processes(two_apis, settings):
    base_a, base_b = two_apis
    sam = new_token(settings, "sam")
    job = httpx.post(f"{base_a}/v1/jobs", json=JOB, headers=sam).json()["id"]  # stays queued: its stream stays open
    path = f"/v1/jobs/{job}/events"
    with (
        httpx.stream("GET", base_a + path, headers=sam, timeout=30) as one,
        httpx.stream("GET", base_b + path, headers=sam, timeout=30) as two,
    ):
        assert one.status_code == two.status_code == 200
        problem = assert_too_many(httpx.get(base_a + path, headers=sam, timeout=30), "CSSL_MAX_EVENT_STREAMS")
        assert "2 at once" in problem["detail"]
        assert httpx.get(base_b + path, headers=sam, timeout=30).status_code == 429
    # Closing the streams frees their slots.
    with httpx.stream("GET", base_b + path, headers=sam, timeout=30) as again:
        assert wait_for(lambda: again.status_code == 200, 5)


@needs_servers("a worker on Redis")
def test_a_worker_stops_a_job_at_the_maximum_run_time(service_env, settings, tmp_path):
    from api.main import create_app

    queue = fresh_queue(settings)
    worker = start_worker({**service_env, "CSSL_QUEUE": queue, "CSSL_MAX_RUN_SECONDS": "6"}, tmp_path / "w.log", "wt")
    try:
        # Submitted where there is no maximum, as before the worker's was set: only the worker stops it.
        with TestClient(create_app(settings.with_(queue=queue, max_run_seconds=0), sweep=False)) as client:
            tess = new_token(settings, "tess")
            long_job = {**JOB, "config": {**TINY, "epochs": 10_000}}
            job = client.post("/v1/jobs", json=long_job, headers=tess).json()
            started = time.monotonic()
            done = wait_for(
                lambda: (
                    (j := client.get(f"/v1/jobs/{job['id']}", headers=tess).json())["status"]
                    in ("succeeded", "failed", "cancelled")
                    and j
                ),
                180,
                0.5,
                "the job to stop",
            )
            assert done["status"] == "failed", done
            assert "maximum run time of 6 s" in done["error"] and "CSSL_MAX_RUN_SECONDS" in done["error"]
            assert done["result"]["stopped"] == "cancelled" and 0 < done["result"]["epochs_completed"] < 10_000
            checkpoints = client.get("/v1/checkpoints", params={"job": job["id"]}, headers=tess).json()
            assert checkpoints and checkpoints[0]["step"] == done["result"]["steps"]
            assert time.monotonic() - started < 120
    finally:
        worker.stop()
        delete_queue(REDIS_URL, queue)


def test_a_stream_slot_expires_when_its_process_dies():
    from api import ratelimit

    slots = ratelimit.MemoryStreamSlots()
    assert slots.acquire("o", "a", 1) and not slots.acquire("o", "b", 1)
    slots._slots["o"]["a"] = time.time() - 1  # not renewed within STREAM_SLOT_TTL
    assert slots.acquire("o", "b", 1)
    slots.release("o", "b")
    assert slots.acquire("o", "c", 1)


def test_an_owner_runs_only_so_many_jobs_at_once(settings):
    from store import jobs
    from store.db import session_scope
    from store.jobs import NewJob

    new = NewJob(kind="pretrain", method="simclr", dataset="synthetic", dataset_path=None, config={}, evaluate=[])
    owner, other = f"rita-{uuid.uuid4().hex[:6]}", f"sol-{uuid.uuid4().hex[:6]}"
    with session_scope(settings.database_url) as session:
        first, second = (jobs.create_job(session, owner, new)[0].id for _ in range(2))
        others = jobs.create_job(session, other, new)[0].id
        for job_id in (first, second, others):
            jobs.mark_published(session, job_id)
    with session_scope(settings.database_url) as session:
        assert jobs.claim_job(session, first, "w1", max_running=1) is not None
    with session_scope(settings.database_url) as session:
        assert jobs.claim_job(session, second, "w2", max_running=1) is None
        assert jobs.claim_job(session, others, "w2", max_running=1) is not None
    with session_scope(settings.database_url) as session:
        waiting = jobs.get_job(session, second)
        # Still queued, with no message out: the sweeper publishes it again.
        assert waiting.status == "queued" and waiting.published_at is None and waiting.attempt == 0
        assert jobs.finish_job(session, first, 1, "succeeded")
    with session_scope(settings.database_url) as session:
        assert jobs.claim_job(session, second, "w2", max_running=1).attempt == 1

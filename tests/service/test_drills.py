"""Fault drills through real processes: workers killed with SIGKILL again and again, Redis and
Postgres restarted under a running job, an API restarted under its SSE clients, a message
delivered twice, a prefork worker shut down warm. Each checks that nothing is lost or doubled.

The restart drill runs on private Postgres and Redis servers (``servers.py``) so that it
disturbs nothing else on the machine."""

from __future__ import annotations

import json
import re
import signal
import sys
import tempfile
import time

import httpx
import pytest
import torch

from .servers import PrivatePostgres, PrivateRedis, unavailable
from .support import TINY, Process, auth, needs_servers, read_events, start_api, start_worker, wait_for


def submit(base, headers, **body):
    response = httpx.post(
        f"{base}/v1/jobs",
        json={"kind": "pretrain", "dataset": {"name": "synthetic"}, **body},
        headers=headers,
        timeout=30,
    )
    assert response.status_code == 202, response.text
    return response.json()


def get(base, path, headers, **params):
    response = httpx.get(base + path, headers=headers, params=params, timeout=60)
    assert response.status_code == 200, response.text
    return response.json() if "json" in response.headers["content-type"] else response.text


def newest_checkpoint_step(settings, job_id: str) -> int:
    from store import records
    from store.db import session_scope

    with session_scope(settings.database_url) as session:
        newest = records.latest_checkpoint(session, job_id)
        return newest.step if newest else 0


def progress_step(settings, job_id: str) -> int:
    from store import jobs
    from store.db import session_scope

    with session_scope(settings.database_url) as session:
        return (jobs.get_job(session, job_id).progress or {}).get("step", 0)


def state_changes(base, job_id, headers) -> list[tuple[str, int]]:
    events = read_events(base, f"/v1/jobs/{job_id}/events", headers, timeout=60)
    return [(e["data"]["status"], e["data"]["attempt"]) for e in events if e["event"] == "state"]


def uninterrupted_weights(job: dict) -> dict[str, torch.Tensor]:
    from cssl_core.config import build_config
    from cssl_core.train import pretrain
    from cssl_core.train.checkpoint import load_checkpoint

    with tempfile.TemporaryDirectory() as out:
        outcome = pretrain(build_config(job["method"], job["config"]), out)
        return load_checkpoint(outcome.checkpoint)["model"]


@needs_servers("a lost worker's message is redelivered differently on the file queue")
def test_ten_kills_in_a_row_lose_nothing(server, service_env, settings, tmp_path, alice):
    epochs, steps_per_epoch = 20, TINY["subset"] // TINY["batch_size"]
    job = submit(server, alice, method="simclr", config={**TINY, "epochs": epochs, "checkpoint_every": 1}, evaluate=[])
    started = time.monotonic()
    worker = start_worker(service_env, tmp_path / "worker0.log", "k0")
    killed_after = []
    try:
        for kill in range(10):
            last = killed_after[-1] if killed_after else 0
            step = wait_for(
                lambda last=last: (s := newest_checkpoint_step(settings, job["id"])) > last and s,
                timeout=120,
                interval=0.05,
                message=f"a checkpoint past step {last}",
            )
            # Mid-epoch: half an epoch past that checkpoint.
            wait_for(
                lambda step=step: progress_step(settings, job["id"]) >= step + steps_per_epoch // 2,
                timeout=60,
                interval=0.02,
                message=f"progress past step {step}",
            )
            worker.popen.send_signal(signal.SIGKILL)  # no warm shutdown: the worker is simply gone
            worker.popen.wait()
            killed_after.append(step)
            worker.handle.close()
            worker = start_worker(service_env, tmp_path / f"worker{kill + 1}.log", f"k{kill + 1}")
        wait_for(
            lambda: get(server, f"/v1/jobs/{job['id']}", alice)["status"] not in ("queued", "running"),
            timeout=180,
            message="the job to finish",
        )
    finally:
        worker.stop(signal.SIGQUIT)
    wall = time.monotonic() - started
    done = get(server, f"/v1/jobs/{job['id']}", alice)
    assert done["status"] == "succeeded", done
    assert done["attempt"] == 11 and done["result"]["steps"] == epochs * steps_per_epoch
    # Never two runs at once: each attempt was given up before the next one was claimed.
    events = read_events(server, f"/v1/jobs/{job['id']}/events", alice, timeout=60)
    states = [(e["data"]["status"], e["data"]["attempt"]) for e in events if e["event"] == "state"]
    expected = [("queued", 0)] + [pair for a in range(1, 11) for pair in (("running", a), ("queued", a))]
    assert states == expected + [("running", 11), ("succeeded", 11)], states
    # Each attempt resumed from the newest checkpoint there was when its predecessor died.
    log = get(server, f"/v1/jobs/{job['id']}/logs", alice)
    resumed = [int(epoch) * steps_per_epoch for epoch in re.findall(r"resuming from \S+epoch_(\d+)\.pt", log)]
    assert len(resumed) == 10
    assert all(r >= k for r, k in zip(resumed, killed_after)) and resumed == sorted(set(resumed)), (
        resumed,
        killed_after,
    )
    # One metric point per step, although the steps after each checkpoint ran twice.
    series = get(server, f"/v1/jobs/{job['id']}/metrics", alice)["series"]
    assert [p["step"] for p in series["loss"]] == list(range(1, epochs * steps_per_epoch + 1))
    # The same weights as a run that was never interrupted.
    from cssl_core.train.checkpoint import load_checkpoint

    final = load_checkpoint(settings.artifacts.folder / done["result"]["checkpoint"])["model"]
    reference = uninterrupted_weights(done)
    assert final.keys() == reference.keys()
    assert all(torch.equal(final[name], reference[name]) for name in final)
    # Steps redone: how far each lost attempt got past the checkpoint its successor resumed from.
    reached, furthest = [], 0
    for event in events:
        if event["event"] == "progress":
            furthest = max(furthest, event["data"]["step"])
        elif event["event"] == "state" and event["data"]["status"] == "queued" and event["data"]["attempt"] > 0:
            reached.append(furthest)
    print(
        json.dumps(
            {
                "drill": "kill -9 x10",
                "wall_seconds": round(wall, 1),
                "attempts": done["attempt"],
                "steps": done["result"]["steps"],
                "steps_redone": sum(g - r for g, r in zip(reached, resumed)),
            }
        )
    )


@needs_servers("duplicate delivery needs the Redis queue")
def test_a_message_delivered_twice_runs_once(server, service_env, settings, tmp_path, alice):
    from dispatch.broker import make_celery
    from dispatch.publisher import publish

    job = submit(server, alice, method="simclr", config=TINY, evaluate=[])
    app = make_celery(settings)
    publish(app, settings, job["id"], 5)
    publish(app, settings, job["id"], 5)  # three messages for one job
    worker = start_worker(service_env, tmp_path / "worker.log", "dup")
    try:
        wait_for(
            lambda: get(server, f"/v1/jobs/{job['id']}", alice)["status"] == "succeeded",
            timeout=120,
            message="the job to succeed",
        )
        wait_for(lambda: worker.output().count("nothing to do") >= 2, timeout=30, message="both duplicates taken")
    finally:
        worker.stop(signal.SIGQUIT)
    assert get(server, f"/v1/jobs/{job['id']}", alice)["attempt"] == 1
    assert state_changes(server, job["id"], alice) == [("queued", 0), ("running", 1), ("succeeded", 1)]


@needs_servers("the warm shutdown drill needs Redis (the file queue redelivers to the stopping worker)")
def test_a_prefork_worker_shutting_down_gives_its_job_back(server, service_env, tmp_path, alice):
    job = submit(server, alice, method="byol", config={**TINY, "epochs": 200, "checkpoint_every": 0}, evaluate=[])
    worker = Process(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "worker.app",
            "worker",
            "--pool=prefork",
            "-c",
            "2",
            "--loglevel=INFO",
            "--hostname=prefork@%h",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        service_env,
        tmp_path / "prefork.log",
    )
    try:
        worker.wait_for(" ready.", timeout=90)
        read_events(server, f"/v1/jobs/{job['id']}/events", alice, until=lambda e: e["event"] == "progress")
        worker.popen.send_signal(signal.SIGTERM)  # warm shutdown, as in a deploy; the job runs in a child
        assert worker.popen.wait(60) == 0, worker.output()[-3000:]
        released = get(server, f"/v1/jobs/{job['id']}", alice)
        assert released["status"] == "queued" and released["attempt"] == 1, released
        [checkpoint] = get(server, "/v1/checkpoints", alice, job=job["id"])
        assert checkpoint["final"] is False and 0 < checkpoint["step"] < 200 * 4
    finally:
        worker.stop(signal.SIGQUIT)
        httpx.post(f"{server}/v1/jobs/{job['id']}/cancel", headers=alice, timeout=30)


@needs_servers("SSE across API processes reads the shared Postgres database")
def test_sse_clients_resume_across_an_api_restart_and_see_every_event_once(service_env, settings, tmp_path, alice):
    api, base = start_api(service_env, tmp_path / "api1.log")
    worker = start_worker(service_env, tmp_path / "worker.log", "sse")
    try:
        job = submit(
            base, alice, method="simclr", config={**TINY, "epochs": 6, "checkpoint_every": 1}, evaluate=["knn"]
        )
        path = f"/v1/jobs/{job['id']}/events"
        clients = [read_events(base, path, alice, until=lambda e: e["event"] == "checkpoint") for _ in range(3)]
        api.stop(signal.SIGKILL)
        api, base = start_api(service_env, tmp_path / "api2.log")
        for seen in clients:
            seen += read_events(base, path, {**alice, "Last-Event-ID": str(seen[-1]["id"])}, timeout=120)
            ids = [e["id"] for e in seen if e["event"] != "end"]
            assert ids == list(range(1, len(ids) + 1))  # every event, once, in order
            assert seen[-1]["event"] == "end"
            assert [e["data"]["status"] for e in seen if e["event"] == "state"][-1] == "succeeded"
    finally:
        worker.stop(signal.SIGQUIT)
        api.stop()


@pytest.mark.skipif(unavailable() is not None, reason=f"private servers cannot be started: {unavailable()}")
def test_broker_and_database_restarts_cost_a_job_nothing(tmp_path):
    from store import migrate
    from store import tokens as store_tokens
    from store.db import session_scope

    postgres = PrivatePostgres().start()
    broker = PrivateRedis(tmp_path / "redis").start()
    api = worker = None
    try:
        postgres.create_database()
        migrate.upgrade(postgres.url)
        with session_scope(postgres.url) as session:
            headers = auth(store_tokens.create_token(session, "alice"))
        env = {
            "CSSL_DATABASE_URL": postgres.url,
            "CSSL_BROKER_URL": broker.url,
            "CSSL_STATE_DIR": str(tmp_path / "state"),
            "CSSL_QUEUE": "drill",
            "CSSL_SWEEP_INTERVAL": "1",
            "CSSL_HEARTBEAT_INTERVAL": "0.5",
            "CSSL_HEARTBEAT_TIMEOUT": "30",
            "CSSL_PROGRESS_EVERY": "1",
        }
        api, base = start_api(env, tmp_path / "api.log")
        worker = start_worker(env, tmp_path / "worker.log", "drill")

        # The broker is down at submission: 202, the job waits, and runs once Redis is back.
        broker.stop()
        job = submit(base, headers, method="simclr", config={**TINY, "epochs": 30, "checkpoint_every": 5}, evaluate=[])
        time.sleep(2)
        assert get(base, f"/v1/jobs/{job['id']}", headers)["status"] == "queued"
        broker.start()
        wait_for(
            lambda: get(base, f"/v1/jobs/{job['id']}", headers)["progress"],
            timeout=90,
            message="the job to run once the broker is back",
        )

        # Redis restarted under the running job: it carries on.
        broker.stop()
        broker.start()
        step = get(base, f"/v1/jobs/{job['id']}", headers)["progress"]["step"]
        wait_for(
            lambda: get(base, f"/v1/jobs/{job['id']}", headers)["progress"]["step"] > step + 4,
            timeout=60,
            message="progress after the broker's restart",
        )

        # Postgres restarted under the running job: the worker's writes wait and go through.
        postgres.stop()
        time.sleep(3)
        postgres.start()
        wait_for(
            lambda: get(base, f"/v1/jobs/{job['id']}", headers)["status"] == "succeeded",
            timeout=180,
            message="the job to succeed after the database's restart",
        )
        done = get(base, f"/v1/jobs/{job['id']}", headers)
        assert done["attempt"] == 1 and done["result"]["steps"] == 30 * 4
        loss = get(base, f"/v1/jobs/{job['id']}/metrics", headers)["series"]["loss"]
        assert [p["step"] for p in loss] == list(range(1, 30 * 4 + 1))
        assert "trying again" in worker.output()  # it did wait for the database
    finally:
        for process in (worker, api):
            if process is not None:
                process.stop(signal.SIGQUIT)
        broker.stop()
        postgres.remove()

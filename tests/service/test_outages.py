"""Outage drills on private Postgres and Redis servers (``servers.py``): the database stopped
under a running job for longer than the heartbeat timeout, then for longer than the worker's
retry window, and the broker stopped under a running job. The windows are shortened by settings
so that each drill takes a minute or two; ``benchmarks/outage_drill.py`` runs them at full length.

Each job must end ``succeeded`` with one metric point per step, and no attempt may be spent on
an outage: the job stays on its attempt while its worker waits, or is given back to the queue
(released, never counted against ``CSSL_MAX_ATTEMPTS``), never re-queued as lost."""

from __future__ import annotations

import logging
import signal
import time
from dataclasses import dataclass

import httpx
import pytest
from sqlalchemy.exc import DBAPIError

from .servers import PrivatePostgres, PrivateRedis, unavailable
from .support import TINY, Process, auth, needs_servers, read_events, start_api, start_worker, wait_for

needs_private_servers = pytest.mark.skipif(
    unavailable() is not None, reason=f"private servers cannot be started: {unavailable()}"
)

HEARTBEAT_TIMEOUT = 5
# Well past the first outage (two heartbeat timeouts plus the time Postgres takes to start again).
RETRY_WINDOW = 25


@dataclass
class Service:
    postgres: PrivatePostgres
    broker: PrivateRedis
    api: Process
    base: str
    worker: Process
    headers: dict[str, str]

    def submit(self, train_seconds: float) -> str:
        """A job that trains for ``train_seconds`` (its time budget: seconds of training steps, so
        that it outlasts the drill however fast the machine), a checkpoint every epoch of 4 steps."""
        config = {**TINY, "epochs": 10_000, "checkpoint_every": 1, "time_budget": train_seconds}
        body = {
            "kind": "pretrain",
            "method": "simclr",
            "dataset": {"name": "synthetic"},
            "evaluate": [],
            "config": config,
        }
        response = httpx.post(f"{self.base}/v1/jobs", json=body, headers=self.headers, timeout=30)
        assert response.status_code == 202, response.text
        return response.json()["id"]

    def job(self, job_id: str) -> dict | None:
        """The job's row read straight from the database; None while it is unreachable."""
        from store import jobs
        from store.db import session_scope

        try:
            with session_scope(self.postgres.url) as session:
                job = jobs.get_job(session, job_id)
                return {
                    "status": job.status,
                    "attempt": job.attempt,
                    "stalled_attempts": job.stalled_attempts,
                    "step": (job.progress or {}).get("step", 0),
                    "result": job.result,
                }
        except DBAPIError:
            return None

    def step(self, job_id: str) -> int:
        return (self.job(job_id) or {}).get("step", 0)

    def finished(self, job_id: str, timeout: float) -> dict:
        return wait_for(
            lambda: (job := self.job(job_id)) and job["status"] not in ("queued", "running") and job,
            timeout=timeout,
            interval=0.5,
            message=f"job {job_id} to finish",
        )

    def loss_steps(self, job_id: str) -> list[int]:
        response = httpx.get(f"{self.base}/v1/jobs/{job_id}/metrics", headers=self.headers, timeout=60)
        assert response.status_code == 200, response.text
        return [point["step"] for point in response.json()["series"]["loss"]]

    def state_events(self, job_id: str) -> list[dict]:
        events = read_events(self.base, f"/v1/jobs/{job_id}/events", self.headers, timeout=60)
        return [event["data"] for event in events if event["event"] == "state"]


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    from store import migrate
    from store import tokens as store_tokens
    from store.db import session_scope

    tmp = tmp_path_factory.mktemp("outages")
    postgres = PrivatePostgres().start()
    broker = PrivateRedis(tmp / "redis").start()
    api = worker = None
    try:
        postgres.create_database()
        migrate.upgrade(postgres.url)
        with session_scope(postgres.url) as session:
            headers = auth(store_tokens.create_token(session, "alice"))
        env = {
            "CSSL_DATABASE_URL": postgres.url,
            "CSSL_BROKER_URL": broker.url,
            "CSSL_STATE_DIR": str(tmp / "state"),
            "CSSL_QUEUE": "outages",
            "CSSL_SWEEP_INTERVAL": "1",
            "CSSL_HEARTBEAT_INTERVAL": "0.5",
            "CSSL_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT),
            "CSSL_DATABASE_RETRY_WINDOW": str(RETRY_WINDOW),
            "CSSL_PROGRESS_EVERY": "1",
        }
        api, base = start_api(env, tmp / "api.log")
        worker = start_worker(env, tmp / "worker.log", "outages")
        yield Service(postgres, broker, api, base, worker, headers)
    finally:
        for process in (worker, api):
            if process is not None:
                process.stop(signal.SIGQUIT)
        broker.stop()
        postgres.remove()


@needs_private_servers
def test_a_database_outage_spends_no_attempt(service):
    job_id = service.submit(train_seconds=150)  # still training when the second outage begins
    wait_for(lambda: service.step(job_id) >= 2, timeout=120, message="the job to start training")

    # Longer than the heartbeat timeout, shorter than the retry window: the worker waits, the
    # sweeper does not take the job for lost once the database is back.
    service.postgres.stop()
    time.sleep(2 * HEARTBEAT_TIMEOUT)
    service.postgres.start()
    back = time.monotonic()
    step = wait_for(lambda: service.step(job_id), timeout=60, message="the database to answer")
    wait_for(lambda: service.step(job_id) > step, timeout=60, message="progress after the database came back")
    time.sleep(max(0.0, back + HEARTBEAT_TIMEOUT + 3 - time.monotonic()))  # the sweeper has judged by now
    job = service.job(job_id)
    assert (job["status"], job["attempt"], job["stalled_attempts"]) == ("running", 1, 0), job

    # Longer than the retry window: the attempt stops, and once the database is back it writes
    # what it kept and gives the job back to the queue; the next attempt resumes from its checkpoint.
    service.postgres.stop()
    time.sleep(2 * RETRY_WINDOW)
    service.postgres.start()
    done = service.finished(job_id, timeout=300)
    assert done["status"] == "succeeded", done
    assert (done["attempt"], done["stalled_attempts"]) == (2, 0), done
    assert service.loss_steps(job_id) == list(range(1, done["result"]["steps"] + 1))
    states = service.state_events(job_id)
    assert [(s["status"], s["attempt"]) for s in states] == [
        ("queued", 0),
        ("running", 1),
        ("queued", 1),
        ("running", 2),
        ("succeeded", 2),
    ], states
    assert "could not reach the database" in states[2]["message"], states[2]


@needs_private_servers
def test_a_broker_outage_costs_a_running_job_nothing(service):
    job_id = service.submit(train_seconds=20)
    step = wait_for(lambda: service.step(job_id), timeout=120, message="the job to start training")
    service.broker.stop()
    down = time.monotonic()
    wait_for(lambda: service.step(job_id) > step, timeout=60, message="training to go on without the broker")
    time.sleep(max(0.0, down + 2 * HEARTBEAT_TIMEOUT - time.monotonic()))
    service.broker.start()
    done = service.finished(job_id, timeout=300)
    assert (done["status"], done["attempt"], done["stalled_attempts"]) == ("succeeded", 1, 0), done
    assert service.loss_steps(job_id) == list(range(1, done["result"]["steps"] + 1))
    # The worker took its broker back: a job submitted now runs.
    second = service.submit(train_seconds=1)
    assert service.finished(second, timeout=180)["status"] == "succeeded"


def test_a_server_that_never_answers_costs_the_connect_timeout_not_a_hang():
    # A socket that accepts connections into its backlog and never says a word: a Postgres
    # server behind a dropped network looks the same to the client.
    import socket
    import threading

    from store.db import engine_for

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"postgresql+psycopg://postgres@127.0.0.1:{silent.getsockname()[1]}/cssl"
        failed: list[BaseException] = []

        def connect():
            try:
                engine_for(url).connect().close()
            except Exception as exc:
                failed.append(exc)

        thread = threading.Thread(target=connect, daemon=True)
        started = time.monotonic()
        thread.start()
        thread.join(30)  # the connect timeout is 5 s; without one, it waits as long as the socket lives
        assert not thread.is_alive(), "the connection attempt still hangs"
        assert failed and isinstance(failed[0], DBAPIError), failed
        assert time.monotonic() - started < 15


def test_readiness_says_unreachable_without_the_drivers_words(settings):
    from fastapi.testclient import TestClient

    from api.main import create_app

    down = settings.with_(
        database_url="postgresql+psycopg://postgres@127.0.0.1:1/cssl",
        broker_url="redis://127.0.0.1:1/0",
        queue=settings.queue + "_down",
    )
    with TestClient(create_app(down, sweep=False)) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert (body["status"], body["database"], body["broker"]) == ("unavailable", "unreachable", "unreachable"), body


def test_an_unexpected_error_tells_the_user_what_to_do_and_keeps_the_traceback_from_the_job_log(
    settings, tmp_path, monkeypatch
):
    from worker import runner

    def broken(*_):
        raise RuntimeError("password=hunter2 at db.internal:5432")

    monkeypatch.setattr(runner, "_job_data", broken)
    job = runner.ClaimedJob(
        id="0" * 32,
        kind="pretrain",
        method="simclr",
        dataset="synthetic",
        dataset_path=None,
        config={},
        evaluate=[],
        attempt=1,
        source_checkpoint=None,
        source_checkpoint_id=None,
        resume_from=None,
        resume_checkpoint_id=None,
        resume_is_final=False,
    )
    heartbeat = runner.Heartbeat(settings, job.id, job.attempt)  # not started: nothing is written
    worker_log = []
    handler = logging.Handler()
    handler.emit = worker_log.append
    logging.getLogger().addHandler(handler)
    try:
        with runner._job_log(tmp_path / "job.log"):
            outcome = runner._run(settings, job, [], tmp_path, runner.Recorder(settings, job, heartbeat), heartbeat)
    finally:
        logging.getLogger().removeHandler(handler)
    assert outcome.ending is runner.Ending.FAILED
    assert "submit it again" in outcome.message and "hunter2" not in outcome.message
    job_log = (tmp_path / "job.log").read_text()
    assert "submit it again" in job_log and "Traceback" not in job_log and "hunter2" not in job_log
    assert any("hunter2" in record.getMessage() for record in worker_log)  # the operator still sees it


@needs_servers("the sweeper's advisory lock is Postgres's")
def test_the_sweeper_judges_no_worker_lost_until_a_heartbeat_timeout_after_it_reconnects(settings):
    from datetime import timedelta

    from sqlalchemy import update

    from dispatch.broker import delete_queue, make_celery
    from dispatch.publisher import Publisher
    from dispatch.sweeper import Sweeper
    from store import jobs
    from store.db import session_scope
    from store.models import Job, utcnow

    own = settings.with_(queue=settings.queue + "_reconnect")
    away = own.with_(database_url="postgresql+psycopg://postgres@127.0.0.1:1/cssl")
    publisher = Publisher(make_celery(own), away)
    sweeper = Sweeper(publisher)
    with session_scope(settings.database_url) as session:
        job, _ = jobs.create_job(
            session,
            "alice",
            jobs.NewJob(
                kind="pretrain", method="simclr", dataset="synthetic", dataset_path=None, config={}, evaluate=[]
            ),
        )
        jobs.claim_job(session, job.id, "w")
        # Its worker last beat long ago, as every worker's last beat is when the database comes back.
        session.execute(update(Job).where(Job.id == job.id).values(heartbeat_at=utcnow() - timedelta(hours=1)))
    try:
        with pytest.raises(DBAPIError):
            sweeper.sweep_once()  # the database is away
        publisher.settings = own  # and back
        assert sweeper.sweep_once()["requeued"] == 0
        assert service_job_status(settings, job.id) == "running"
        time.sleep(settings.heartbeat_timeout + 0.5)
        while sweeper.sweep_once() is None:  # another sweeper held the lock
            time.sleep(0.1)
        assert service_job_status(settings, job.id) == "queued"  # a worker silent this long is lost
    finally:
        with session_scope(settings.database_url) as session:
            session.execute(update(Job).where(Job.id == job.id).values(status="cancelled"))
        delete_queue(own.broker_url, own.queue)


def service_job_status(settings, job_id: str) -> str:
    from store import jobs
    from store.db import session_scope

    with session_scope(settings.database_url) as session:
        return jobs.get_job(session, job_id).status

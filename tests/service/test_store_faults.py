"""The job store under races and partial failures, against the real database: event numbers
that never skip, one metric point per step, retries that count only attempts without
progress, a warm release that honours a cancel, one sweeper at a time, and a resume that
falls back to the newest checkpoint that loads."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import torch
from sqlalchemy import update

from store import jobs, records
from store.db import exclusive, session_scope
from store.models import Job, utcnow

from .support import TINY, needs_servers


def new_job(settings, owner="alice", kind="pretrain") -> str:
    with session_scope(settings.database_url) as session:
        job, _ = jobs.create_job(
            session,
            owner,
            jobs.NewJob(kind=kind, method="simclr", dataset="synthetic", dataset_path=None, config={}, evaluate=[]),
        )
        return job.id


def claim(settings, job_id: str, worker: str = "w") -> int:
    with session_scope(settings.database_url) as session:
        job = jobs.claim_job(session, job_id, worker)
        assert job is not None
        return job.attempt


def lose_worker(settings, job_id: str) -> list[str]:
    """The worker stops heartbeating: backdate its heartbeat and sweep."""
    with session_scope(settings.database_url) as session:
        session.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=utcnow() - timedelta(hours=1)))
    with session_scope(settings.database_url) as session:
        return jobs.requeue_lost(session, settings.heartbeat_timeout, settings.max_attempts)


def job_row(settings, job_id: str) -> Job:
    with session_scope(settings.database_url) as session:
        return jobs.get_job(session, job_id)


def seqs(settings, job_id: str) -> list[int]:
    with session_scope(settings.database_url) as session:
        return [e.seq for e in records.events_after(session, job_id, 0)]


@needs_servers("concurrent transactions on one row need Postgres")
def test_an_event_that_commits_late_is_never_skipped(settings):
    # Two writers append events to one job; the first holds its transaction open. With
    # table-wide ids the second's event (higher id) would become visible first and a stream
    # following `id > last` would skip the first's for good.
    job_id = new_job(settings)
    before = seqs(settings, job_id)
    first = session_scope(settings.database_url)
    session = first.__enter__()
    records.add_event(session, job_id, "progress", {"writer": "slow"})
    second_done = threading.Event()

    def second_writer():
        with session_scope(settings.database_url) as other:
            records.add_event(other, job_id, "progress", {"writer": "fast"})
        second_done.set()

    thread = threading.Thread(target=second_writer)
    thread.start()
    time.sleep(1.0)
    # The second writer waits for the first's row lock: nothing new is visible yet.
    assert not second_done.is_set()
    assert seqs(settings, job_id) == before
    first.__exit__(None, None, None)
    thread.join(10)
    assert second_done.is_set()
    with session_scope(settings.database_url) as check:
        new = records.events_after(check, job_id, before[-1])
    assert [(e.seq, e.data["writer"]) for e in new] == [(before[-1] + 1, "slow"), (before[-1] + 2, "fast")]


def test_event_numbers_are_per_job_and_gap_free(settings):
    a, b = new_job(settings), new_job(settings)
    claim(settings, a)
    with session_scope(settings.database_url) as session:
        jobs.release_job(session, a, 1, "deploy")
    assert seqs(settings, a) == [1, 2, 3]  # queued, running, queued
    assert seqs(settings, b) == [1]


def test_one_metric_point_per_step_and_resume_drops_what_came_after(settings):
    job_id = new_job(settings)
    claim(settings, job_id)
    with session_scope(settings.database_url) as session:
        for step in range(1, 9):
            records.add_metric_point(session, job_id, step, (step - 1) // 4, {"loss": float(step)})
        records.add_metric_point(session, job_id, 8, 1, {"loss": 80.0})  # the same step reported again
        for epoch in (1, 2):
            records.record_evaluation(
                session,
                job_id,
                None,
                {
                    "protocol": "knn",
                    "top1": 10.0 * epoch,
                    "epoch": epoch,
                    "dataset": "synthetic",
                    "num_train": 1,
                    "num_test": 1,
                },
            )
    with session_scope(settings.database_url) as session:
        records.drop_metrics_after(session, job_id, step=4, epoch=1)  # resumed from the end of epoch 1
        records.add_metric_point(session, job_id, 5, 1, {"loss": 5.5})
        series = records.metric_series(session, job_id)
    assert [(p["step"], p["value"]) for p in series["loss"]] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (5, 5.5)]
    assert [(p["epoch"], p["value"]) for p in series["knn_top1"]] == [(1, 10.0)]


def test_progress_keeps_the_last_knn_result(settings):
    job_id = new_job(settings)
    attempt = claim(settings, job_id)
    with session_scope(settings.database_url) as session:
        jobs.update_latest_metrics(session, job_id, {"knn_top1": 42.0})
    with session_scope(settings.database_url) as session:
        assert jobs.record_progress(session, job_id, attempt, {"step": 5}, {"loss": 1.5})
    assert job_row(settings, job_id).latest_metrics == {"knn_top1": 42.0, "loss": 1.5}


def test_a_warm_release_cancels_a_job_whose_cancel_was_requested(settings):
    job_id = new_job(settings)
    attempt = claim(settings, job_id)
    with session_scope(settings.database_url) as session:
        jobs.request_cancel(session, jobs.get_job(session, job_id))
    with session_scope(settings.database_url) as session:
        assert jobs.release_job(session, job_id, attempt, "worker w shut down")
    job = job_row(settings, job_id)
    assert job.status == "cancelled" and job.finished_at is not None


def checkpoint_at(settings, job_id: str, step: int) -> None:
    with session_scope(settings.database_url) as session:
        records.record_checkpoint(
            session, job_id, f"jobs/{job_id}/step_{step}.pt", epoch=step, step=step, final=False, size_bytes=1
        )


def test_only_attempts_without_a_new_checkpoint_count(settings):
    assert settings.max_attempts == 3
    job_id = new_job(settings)
    # Ten lost workers, each after a new checkpoint: the job is always re-queued.
    for attempt in range(1, 11):
        assert claim(settings, job_id) == attempt
        with session_scope(settings.database_url) as session:
            jobs.set_resume_point(session, job_id, attempt, (attempt - 1) * 10)
        checkpoint_at(settings, job_id, attempt * 10)
        assert lose_worker(settings, job_id) == [job_id]
        assert job_row(settings, job_id).stalled_attempts == 0
    # Then three in a row that never get past the checkpoint they resumed from.
    for stalled in (1, 2, 3):
        attempt = claim(settings, job_id)
        with session_scope(settings.database_url) as session:
            jobs.set_resume_point(session, job_id, attempt, 100)
        requeued = lose_worker(settings, job_id)
        job = job_row(settings, job_id)
        assert job.stalled_attempts == stalled
        assert requeued == ([job_id] if stalled < 3 else [])
    assert job.status == "failed"
    assert "3 attempts in a row were lost without writing a new checkpoint" in job.error
    assert "step 100" in job.error


def test_progress_resets_the_count_of_stalled_attempts(settings):
    job_id = new_job(settings)
    for _ in range(2):
        attempt = claim(settings, job_id)
        with session_scope(settings.database_url) as session:
            jobs.set_resume_point(session, job_id, attempt, 0)
        lose_worker(settings, job_id)
    assert job_row(settings, job_id).stalled_attempts == 2
    attempt = claim(settings, job_id)
    with session_scope(settings.database_url) as session:
        jobs.set_resume_point(session, job_id, attempt, 0)
    checkpoint_at(settings, job_id, 4)
    assert lose_worker(settings, job_id) == [job_id]
    assert job_row(settings, job_id).stalled_attempts == 0


@needs_servers("the advisory lock is Postgres's")
def test_one_sweeper_at_a_time(settings):
    from dispatch.broker import make_celery
    from dispatch.publisher import Publisher
    from dispatch.sweeper import sweep

    publisher = Publisher(make_celery(settings), settings)
    with exclusive(settings.database_url) as held:
        assert held
        assert sweep(publisher) is None  # another process's sweeper holds it
        with exclusive(settings.database_url) as again:
            assert not again
    assert sweep(publisher) is not None


@needs_servers("reads the Redis queue's length")
def test_a_waiting_message_is_not_published_again(settings):
    import redis

    from dispatch.broker import make_celery, queue_size
    from dispatch.publisher import Publisher
    from dispatch.sweeper import sweep

    own = settings.with_(queue=settings.queue + "_pileup")
    app = make_celery(own)
    publisher = Publisher(app, own)
    job_id = new_job(settings)
    assert publisher.send_and_record(job_id, 5)
    with session_scope(settings.database_url) as session:  # sent long ago and still not taken
        session.execute(update(Job).where(Job.id == job_id).values(published_at=utcnow() - timedelta(days=1)))
    try:
        for _ in range(3):
            while sweep(publisher) is None:
                time.sleep(0.1)
        assert queue_size(app, own) == 1  # a busy queue: the message is still there, no copies
        broker = redis.Redis.from_url(own.broker_url)
        for key in broker.scan_iter(f"{own.queue}*"):
            broker.delete(key)  # the broker restarted and lost it
        while (counts := sweep(publisher)) is None:
            time.sleep(0.1)
        assert counts["published"] >= 1 and queue_size(app, own) >= 1
    finally:
        with session_scope(settings.database_url) as session:
            session.execute(update(Job).where(Job.id == job_id).values(status="cancelled"))
        broker = redis.Redis.from_url(own.broker_url)
        for key in broker.scan_iter(f"{own.queue}*"):
            broker.delete(key)


def test_resume_falls_back_to_the_newest_checkpoint_that_loads(settings, tmp_path):
    from cssl_core.config import build_config
    from cssl_core.train import pretrain
    from worker.runner import _claim, _resume_point

    job_id = new_job(settings)
    job_dir = settings.artifacts.folder / "jobs" / job_id
    config = build_config("simclr", {**TINY, "dataset": "synthetic", "epochs": 3, "checkpoint_every": 1})
    saved = []
    pretrain(config, job_dir, on_checkpoint=saved.append)
    first, second, third = [info for info in saved if not info.final][:2] + [saved[-1]]
    attempt = claim(settings, job_id)
    with session_scope(settings.database_url) as session:
        for info in (first, second, third):
            records.record_checkpoint(
                session,
                job_id,
                str(info.path.relative_to(settings.artifacts.folder)),
                epoch=info.epoch,
                step=info.step,
                final=info.final,
                size_bytes=1,
            )
        for step in range(1, third.step + 1):
            records.add_metric_point(session, job_id, step, 0, {"loss": 1.0})
    data = third.path.read_bytes()
    third.path.write_bytes(data[: len(data) // 2])  # truncated while being written
    second.path.unlink()  # lost
    lose_worker(settings, job_id)
    claimed = _resume_point(settings, *_claim(settings, job_id, "w2"))
    assert claimed.attempt == attempt + 1
    assert claimed.resume_from == first.path and not claimed.resume_is_final
    assert job_row(settings, job_id).resumed_from_step == first.step
    with session_scope(settings.database_url) as session:
        assert max(p["step"] for p in records.metric_series(session, job_id)["loss"]) == first.step
    torch.load(first.path, weights_only=False)  # untouched


def test_no_loadable_checkpoint_restarts_from_the_beginning_without_old_points(settings):
    from worker.runner import _claim, _resume_point

    job_id = new_job(settings)
    claim(settings, job_id)
    checkpoint_at(settings, job_id, 4)  # its file does not exist
    with session_scope(settings.database_url) as session:
        for step in range(1, 7):
            records.add_metric_point(session, job_id, step, 0, {"loss": 1.0})
    lose_worker(settings, job_id)
    claimed = _resume_point(settings, *_claim(settings, job_id, "w2"))
    assert claimed.resume_from is None
    assert job_row(settings, job_id).resumed_from_step == 0
    with session_scope(settings.database_url) as session:
        assert "loss" not in records.metric_series(session, job_id)


def test_concurrent_exports_of_one_checkpoint(tmp_path):
    # Several downloads of ?format=torchvision at once: each must get a whole file, and none
    # may fail because another renamed away the temporary file it was writing.
    from concurrent.futures import ThreadPoolExecutor

    from api.routes.artifacts import _backbone_file
    from cssl_core.config import build_config
    from cssl_core.train import pretrain

    outcome = pretrain(build_config("simclr", {**TINY, "dataset": "synthetic"}), tmp_path)
    with ThreadPoolExecutor(8) as pool:
        paths = list(pool.map(lambda _: _backbone_file(outcome.checkpoint), range(8)))
    assert len(set(paths)) == 1
    state = torch.load(paths[0], weights_only=True)
    assert state and all(isinstance(v, torch.Tensor) for v in state.values())
    assert [p.name for p in paths[0].parent.iterdir() if p.name.endswith(".tmp")] == []


def test_an_attempt_lost_before_it_chose_its_checkpoint_made_no_progress(settings):
    # Attempt 2 resumes from step 10 and writes step 20; attempt 3 dies before the runner
    # records where it resumes: it still made no progress past 20.
    job_id = new_job(settings)
    claim(settings, job_id)
    checkpoint_at(settings, job_id, 10)
    lose_worker(settings, job_id)
    attempt = claim(settings, job_id)
    assert job_row(settings, job_id).resumed_from_step == 10  # set by the claim itself
    checkpoint_at(settings, job_id, 20)
    lose_worker(settings, job_id)
    assert job_row(settings, job_id).stalled_attempts == 0
    claim(settings, job_id)
    lose_worker(settings, job_id)
    assert job_row(settings, job_id).stalled_attempts == 1 and attempt == 2


def test_a_collapse_warning_is_a_job_event_and_the_spread_a_metric(settings):
    from cssl_core.train.loop import Progress
    from worker import runner

    job_id = new_job(settings)
    attempt = claim(settings, job_id)
    job = runner.ClaimedJob(
        id=job_id,
        kind="pretrain",
        method="simclr",
        dataset="synthetic",
        dataset_path=None,
        config={},
        evaluate=[],
        attempt=attempt,
        source_checkpoint=None,
        source_checkpoint_id=None,
        resume_from=None,
        resume_checkpoint_id=None,
        resume_is_final=False,
    )
    recorder = runner.Recorder(settings, job, runner.Heartbeat(settings, job_id, attempt))
    spread = {"feature_std": 0.001, "feature_cosine": 0.9995}
    common = {"epoch": 0, "total_steps": 100, "epochs": 1, "loss": 1.0, "lr": 0.1, "images_per_second": 9.0}
    recorder.on_progress(Progress(step=40, elapsed=1.0, **common))
    recorder.on_progress(Progress(step=50, elapsed=2.0, stats=spread, warning="the features have collapsed", **common))
    recorder.flush(within=10)
    with session_scope(settings.database_url) as session:
        events = [(e.type, e.data) for e in records.events_after(session, job_id, 0)]
        series = records.metric_series(session, job_id)
    warnings = [data for kind, data in events if kind == "warning"]
    assert warnings == [{"step": 50, "message": "the features have collapsed"}]
    assert [(p["step"], p["value"]) for p in series["feature_cosine"]] == [(50, 0.9995)]
    progress = [data for kind, data in events if kind == "progress"]
    assert progress[-1]["feature_std"] == 0.001 and "feature_std" not in progress[0]

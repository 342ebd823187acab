"""A job on several processes through the service: the API takes ``config.nproc``, a real
worker runs the ranks (2 gloo processes), rank 0 records what one process records, and a rank
killed mid-run fails the attempt at once: the other rank is stopped and the job resumes from
its last checkpoint, as after a worker loss. A rank that hangs (stopped) fails it after the
collective timeout and the launcher's grace, and leaves no process behind."""

from __future__ import annotations

import os
import signal
import time

import pytest

from .support import TINY, needs_servers, start_worker, wait_for
from .test_drills import get, newest_checkpoint_step, progress_step, state_changes, submit

COLLECTIVE_TIMEOUT = 20  # seconds; a dead rank is seen by the launcher's agent well before


@pytest.fixture(scope="module")
def rank_worker(service_env, tmp_path_factory):
    env = {**service_env, "CSSL_COLLECTIVE_TIMEOUT": str(COLLECTIVE_TIMEOUT)}
    process = start_worker(env, tmp_path_factory.mktemp("ranks") / "worker.log", "ranks")
    yield process
    process.stop(signal.SIGQUIT)


def config(**overrides):
    """TINY: 4 steps of a 32-image batch an epoch (16 images a rank on 2), in fp32."""
    return {**TINY, **overrides}


def finished(server, headers, job_id, timeout=240):
    return wait_for(
        lambda: (job := get(server, f"/v1/jobs/{job_id}", headers))["status"] not in ("queued", "running") and job,
        timeout=timeout,
        message=f"job {job_id} to finish",
    )


def losses(server, headers, job_id) -> list[float]:
    series = get(server, f"/v1/jobs/{job_id}/metrics", headers)["series"]["loss"]
    return [point["value"] for point in sorted(series, key=lambda p: p["step"])]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@needs_servers("the worker starts its ranks as processes of its own")
def test_two_ranks_give_one_process_losses(server, rank_worker, alice):
    one = submit(server, alice, method="simclr", config=config(epochs=1), evaluate=[])
    two = submit(server, alice, method="simclr", config=config(epochs=1, nproc=2), evaluate=[])
    done_one, done_two = finished(server, alice, one["id"]), finished(server, alice, two["id"])
    assert done_one["status"] == done_two["status"] == "succeeded", (done_one, done_two)
    assert done_two["config"]["nproc"] == 2 and done_two["attempt"] == 1
    steps = TINY["subset"] // TINY["batch_size"]
    assert done_one["result"]["steps"] == done_two["result"]["steps"] == steps
    # One voice: rank 0 alone records a point per step (the other rank's would double them).
    ref, got = losses(server, alice, one["id"]), losses(server, alice, two["id"])
    assert len(ref) == len(got) == steps
    # The first steps as in tests/test_distributed.py; later ones drift by float noise.
    assert got[:3] == pytest.approx(ref[:3], rel=1e-4), (got, ref)


EPOCHS, STEPS_PER_EPOCH = 12, TINY["subset"] // TINY["batch_size"]


def two_ranks_past_a_checkpoint(server, settings, alice):
    """A 2-rank SimCLR job, running past its first checkpoint: (job, its ranks' folder, pid by rank)."""
    job = submit(server, alice, method="simclr", config=config(epochs=EPOCHS, nproc=2, checkpoint_every=1), evaluate=[])
    ranks = settings.artifacts.folder / "jobs" / job["id"] / "ranks"
    step = wait_for(
        lambda: (s := newest_checkpoint_step(settings, job["id"])) > 0 and s,
        timeout=180,
        interval=0.05,
        message="a first checkpoint",
    )
    wait_for(lambda: progress_step(settings, job["id"]) > step, timeout=60, interval=0.05, message="steps past it")
    pids = {rank: int((ranks / f"{rank}.pid").read_text()) for rank in (0, 1)}
    assert all(alive(pid) for pid in pids.values()), pids
    return job, ranks, pids


@needs_servers("the worker starts its ranks as processes of its own")
def test_a_killed_rank_fails_the_attempt_and_the_job_resumes(server, rank_worker, settings, alice):
    job, ranks, pids = two_ranks_past_a_checkpoint(server, settings, alice)
    killed = time.monotonic()
    os.kill(pids[1], signal.SIGKILL)
    # The attempt ends well within the collective timeout: the agent sees the dead rank.
    wait_for(
        lambda: (j := get(server, f"/v1/jobs/{job['id']}", alice))["status"] != "running" or j["attempt"] > 1,
        timeout=COLLECTIVE_TIMEOUT,
        interval=0.2,
        message="the attempt to be given back",
    )
    assert time.monotonic() - killed < COLLECTIVE_TIMEOUT
    assert not alive(pids[0]), "rank 0 outlived the attempt"
    done = finished(server, alice, job["id"])
    assert done["status"] == "succeeded", done
    assert done["attempt"] == 2 and done["result"]["steps"] == EPOCHS * STEPS_PER_EPOCH
    log = get(server, f"/v1/jobs/{job['id']}/logs", alice)
    assert "a process of the run failed (rank 1: Signal 9 (SIGKILL)" in log, log
    assert "resuming from" in log, log
    states = state_changes(server, job["id"], alice)
    assert states == [("queued", 0), ("running", 1), ("queued", 1), ("running", 2), ("succeeded", 2)], states
    # Resumed, not restarted: one loss point per step, the steps after the checkpoint not doubled.
    series = get(server, f"/v1/jobs/{job['id']}/metrics", alice)["series"]["loss"]
    assert [p["step"] for p in series] == list(range(1, EPOCHS * STEPS_PER_EPOCH + 1))
    assert not ranks.exists() or not any(alive(int(p.read_text())) for p in ranks.glob("*.pid"))


# A stopped rank does not die: the other rank's collective fails after COLLECTIVE_TIMEOUT, and
# the launcher's agent then sends the stopped one SIGTERM, which waits for a SIGCONT, and after
# its fixed 30 s grace (torch's LocalElasticAgent._stop_workers) SIGKILL.
AGENT_GRACE = 30


@needs_servers("the worker starts its ranks as processes of its own")
def test_a_hung_rank_fails_the_attempt_after_the_collective_timeout(server, rank_worker, settings, alice):
    job, _, pids = two_ranks_past_a_checkpoint(server, settings, alice)
    stopped = time.monotonic()
    os.kill(pids[1], signal.SIGSTOP)
    try:
        wait_for(
            lambda: (j := get(server, f"/v1/jobs/{job['id']}", alice))["status"] != "running" or j["attempt"] > 1,
            timeout=COLLECTIVE_TIMEOUT + AGENT_GRACE + 30,
            interval=0.2,
            message="the attempt to be given back",
        )
        given_back = time.monotonic() - stopped
    finally:
        if alive(pids[1]):  # never leave a stopped process behind a failed test
            os.kill(pids[1], signal.SIGKILL)
    print(f"hung rank: attempt given back {given_back:.1f} s after SIGSTOP")
    # Not before rank 0's collective has waited its timeout (it may have been waiting a step already).
    assert given_back > COLLECTIVE_TIMEOUT - 5, given_back
    assert not any(alive(pid) for pid in pids.values()), "a rank outlived the attempt"
    done = finished(server, alice, job["id"])
    assert done["status"] == "succeeded", done
    assert done["attempt"] == 2 and done["result"]["steps"] == EPOCHS * STEPS_PER_EPOCH
    log = get(server, f"/v1/jobs/{job['id']}/logs", alice)
    assert "a process of the run failed" in log and "resuming from" in log, log
    states = state_changes(server, job["id"], alice)
    assert states == [("queued", 0), ("running", 1), ("queued", 1), ("running", 2), ("succeeded", 2)], states

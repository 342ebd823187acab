"""Whole jobs through HTTP: a real uvicorn server, a real Celery worker process, Postgres and Redis
(or the embedded backend where those are not reachable)."""

from __future__ import annotations

import io
import signal

import httpx
import pytest
import torch

from .support import SHARED_DATA, TINY, needs_servers, read_events, start_worker, wait_for


def submit(base, headers, **body):
    response = httpx.post(
        f"{base}/v1/jobs", json={"kind": "pretrain", "dataset": {"name": "synthetic"}, **body}, headers=headers
    )
    assert response.status_code == 202, response.text
    return response.json()


def get(base, path, headers, **params):
    response = httpx.get(base + path, headers=headers, params=params, timeout=60)
    assert response.status_code == 200, response.text
    return response


def test_pretrain_lifecycle(server, worker, alice, bob_headers):
    job = submit(server, alice, method="simclr", config={**TINY, "knn_every": 1, "knn": {"k": 7}})
    events = read_events(server, f"/v1/jobs/{job['id']}/events", alice, timeout=180)
    kinds = [e["event"] for e in events]
    assert kinds[-1] == "end"
    states = [e["data"]["status"] for e in events if e["event"] == "state"]
    assert states == ["queued", "running", "succeeded"], events
    progress = [e["data"] for e in events if e["event"] == "progress"]
    assert progress and progress[-1]["step"] == progress[-1]["total_steps"] == 4
    assert {e["data"]["protocol"] for e in events if e["event"] == "evaluation"} == {"knn", "linear"}
    assert [e["id"] for e in events[:-1]] == sorted(e["id"] for e in events[:-1])

    # Resuming after an event id replays only what came after it.
    middle = events[len(events) // 2]["id"]
    replay = read_events(server, f"/v1/jobs/{job['id']}/events", {**alice, "Last-Event-ID": str(middle)})
    assert [e["id"] for e in replay[:-1]] == [e["id"] for e in events[:-1] if e["id"] > middle]

    done = get(server, f"/v1/jobs/{job['id']}", alice).json()
    assert done["status"] == "succeeded" and done["attempt"] == 1 and done["worker"].startswith("w1@")
    assert done["progress"]["step"] == 4 and done["progress"]["images_per_second"] > 0
    assert done["timings"]["queued_seconds"] >= 0 and done["timings"]["run_seconds"] > 0
    assert done["result"]["stopped"] == "completed" and done["result"]["steps"] == 4
    assert {"loss", "lr", "images_per_second", "knn_top1", "linear_top1"} <= set(done["latest_metrics"])

    series = get(server, f"/v1/jobs/{job['id']}/metrics", alice).json()["series"]
    assert [p["step"] for p in series["loss"]] == [1, 2, 3, 4]
    assert len(series["lr"]) == len(series["images_per_second"]) == 4
    assert [p["epoch"] for p in series["knn_top1"]] == [1]  # the periodic kNN (knn_every=1)

    evaluations = get(server, "/v1/evaluations", alice, job=job["id"]).json()
    final = {e["protocol"]: e for e in evaluations if e["checkpoint_id"] is not None}
    assert set(final) == {"knn", "linear"}
    assert final["knn"]["parameters"]["k"] == 7 and final["linear"]["parameters"]["epochs"] == 100
    for result in final.values():
        assert 0 <= result["top1"] <= 100 and result["top5"] >= result["top1"] and result["num_test"] > 0

    checkpoints = get(server, "/v1/checkpoints", alice, job=job["id"]).json()
    assert [c["final"] for c in checkpoints] == [True]
    checkpoint = checkpoints[0]
    assert get(server, "/v1/evaluations", alice, checkpoint=checkpoint["id"]).json() == list(final.values())
    full = torch.load(io.BytesIO(get(server, checkpoint["download"], alice).content), weights_only=False)
    assert full["step"] == 4 and full["config"]["method"] == "simclr"
    backbone = torch.load(io.BytesIO(get(server, checkpoint["download"], alice, format="torchvision").content))
    assert all(isinstance(v, torch.Tensor) for v in backbone.values()) and "optimizer" not in backbone

    assert "succeeded" in get(server, f"/v1/jobs/{job['id']}/logs", alice).text
    # Another owner sees none of it.
    assert httpx.get(f"{server}/v1/jobs/{job['id']}/events", headers=bob_headers).status_code == 404
    assert httpx.get(f"{server}{checkpoint['download']}", headers=bob_headers).status_code == 404

    # An eval job on the finished job's final checkpoint, with protocol parameters.
    evaluation = submit(server, alice, kind="eval", job=job["id"], evaluate=["knn"], config={"knn": {"k": 20}})
    assert evaluation["checkpoint"] == checkpoint["id"] and evaluation["method"] == "simclr"
    read_events(server, f"/v1/jobs/{evaluation['id']}/events", alice)
    assert get(server, f"/v1/jobs/{evaluation['id']}", alice).json()["status"] == "succeeded"
    results = get(server, "/v1/evaluations", alice, job=evaluation["id"]).json()
    assert [(r["protocol"], r["parameters"]["k"], r["checkpoint_id"]) for r in results] == [
        ("knn", 20, checkpoint["id"])
    ]

    # The semi-supervised protocols run as evaluations too, and keep what they report beside accuracy.
    semi = submit(
        server,
        alice,
        kind="eval",
        job=job["id"],
        evaluate=["finetune", "distill"],
        config={
            "finetune": {"label_fraction": 0.2, "epochs": 1, "batch_size": 16},
            "distill": {"label_fraction": 0.2, "epochs": 1, "finetune_epochs": 1, "batch_size": 16},
        },
    )
    read_events(server, f"/v1/jobs/{semi['id']}/events", alice, timeout=180)
    assert get(server, f"/v1/jobs/{semi['id']}", alice).json()["status"] == "succeeded"
    results = {r["protocol"]: r for r in get(server, "/v1/evaluations", alice, job=semi["id"]).json()}
    assert results["finetune"]["extra"]["num_labelled"] == results["finetune"]["num_train"] > 0
    assert results["finetune"]["parameters"]["label_fraction"] == 0.2
    assert 0 <= results["distill"]["extra"]["teacher_top1"] <= 100


def test_cancel_running_and_queued_jobs(server, worker, alice):
    long = submit(server, alice, method="byol", config={**TINY, "epochs": 100, "checkpoint_every": 0})
    behind = submit(server, alice, method="simsiam", config=TINY)
    # Wait until the long job is running and has reported a step.
    read_events(server, f"/v1/jobs/{long['id']}/events", alice, until=lambda e: e["event"] == "progress")
    assert get(server, f"/v1/jobs/{behind['id']}", alice).json()["status"] == "queued"

    assert httpx.post(f"{server}/v1/jobs/{behind['id']}/cancel", headers=alice).json()["status"] == "cancelled"
    flagged = httpx.post(f"{server}/v1/jobs/{long['id']}/cancel", headers=alice).json()
    assert flagged["status"] == "running" and flagged["cancel_requested"] is True

    events = read_events(server, f"/v1/jobs/{long['id']}/events", alice, timeout=60)
    assert [e["data"]["status"] for e in events if e["event"] == "state"][-1] == "cancelled"
    stopped = get(server, f"/v1/jobs/{long['id']}", alice).json()
    assert stopped["status"] == "cancelled" and stopped["result"]["stopped"] == "cancelled"
    assert stopped["result"]["steps"] < 400
    # It keeps the checkpoint of the step it stopped at.
    [checkpoint] = get(server, "/v1/checkpoints", alice, job=long["id"]).json()
    assert checkpoint["step"] == stopped["result"]["steps"] and checkpoint["final"] is False
    assert get(server, "/v1/evaluations", alice, job=long["id"]).json() == []

    # The queued one never ran, even though its message is still delivered to the worker.
    wait_for(lambda: "not queued" in worker.output(), 30, message="the worker to skip the cancelled job")
    never = get(server, f"/v1/jobs/{behind['id']}", alice).json()
    assert never["status"] == "cancelled" and never["attempt"] == 0 and never["timings"]["started_at"] is None
    assert httpx.post(f"{server}/v1/jobs/{long['id']}/cancel", headers=alice).status_code == 202
    finished = submit(server, alice, method="simclr", config=TINY, evaluate=[])
    read_events(server, f"/v1/jobs/{finished['id']}/events", alice)
    assert httpx.post(f"{server}/v1/jobs/{finished['id']}/cancel", headers=alice).status_code == 409


def test_a_failed_job_says_what_to_change(server, worker, alice):
    job = submit(server, alice, method="simclr", config={**TINY, "subset": 16, "batch_size": 32})
    events = read_events(server, f"/v1/jobs/{job['id']}/events", alice, timeout=60)
    failed = get(server, f"/v1/jobs/{job['id']}", alice).json()
    assert failed["status"] == "failed" and failed["attempt"] == 1
    assert "batch_size 32 is larger than the training set (16 images); lower it" in failed["error"]
    assert events[-2]["data"]["error"] == failed["error"]


def test_a_job_whose_worker_died_resumes_from_its_checkpoint(server, worker, service_env, tmp_path, alice):
    job = submit(server, alice, method="simclr", config={**TINY, "epochs": 3, "checkpoint_every": 1}, evaluate=["knn"])
    read_events(server, f"/v1/jobs/{job['id']}/events", alice, until=lambda e: e["event"] == "checkpoint")
    worker.popen.send_signal(signal.SIGKILL)  # no warm shutdown: the worker is simply gone
    worker.popen.wait()
    replacement = start_worker(service_env, tmp_path / "worker2.log", "w2")
    try:
        events = read_events(server, f"/v1/jobs/{job['id']}/events", alice, timeout=120)
        states = [(e["data"]["status"], e["data"]["attempt"]) for e in events if e["event"] == "state"]
        assert states[:2] == [("queued", 0), ("running", 1)]
        assert ("queued", 1) in states and states[-2:] == [("running", 2), ("succeeded", 2)], states
        done = get(server, f"/v1/jobs/{job['id']}", alice).json()
        assert done["attempt"] == 2 and done["worker"].startswith("w2@") and done["result"]["steps"] == 12
        assert "resuming from" in get(server, f"/v1/jobs/{job['id']}/logs", alice).text
        # One metric point per step although steps after the checkpoint ran twice.
        steps = [p["step"] for p in get(server, f"/v1/jobs/{job['id']}/metrics", alice).json()["series"]["loss"]]
        assert steps == list(range(1, 13))
    finally:
        worker.popen = replacement.popen  # the module's worker fixture stops the replacement
        worker.log = replacement.log


@needs_servers("on the file queue the worker that is shutting down claims the job it gave back once more")
def test_a_worker_shutting_down_gives_its_job_back(server, worker, service_env, tmp_path, alice):
    job = submit(server, alice, method="byol", config={**TINY, "epochs": 3, "checkpoint_every": 0}, evaluate=[])
    read_events(server, f"/v1/jobs/{job['id']}/events", alice, until=lambda e: e["event"] == "progress")
    worker.popen.send_signal(signal.SIGTERM)  # warm shutdown, as in a deploy
    assert worker.popen.wait(30) == 0
    released = get(server, f"/v1/jobs/{job['id']}", alice).json()
    assert released["status"] == "queued" and released["attempt"] == 1
    [checkpoint] = get(server, "/v1/checkpoints", alice, job=job["id"]).json()
    assert checkpoint["final"] is False and 0 < checkpoint["step"] < 12
    replacement = start_worker(service_env, tmp_path / "worker3.log", "w3")
    try:
        events = read_events(server, f"/v1/jobs/{job['id']}/events", alice, timeout=120)
        states = [(e["data"]["status"], e["data"]["attempt"]) for e in events if e["event"] == "state"]
        assert states == [("queued", 0), ("running", 1), ("queued", 1), ("running", 2), ("succeeded", 2)], states
        assert get(server, f"/v1/jobs/{job['id']}", alice).json()["result"]["steps"] == 12
    finally:
        worker.popen = replacement.popen
        worker.log = replacement.log


@pytest.mark.skipif(not (SHARED_DATA / "cifar10-jpeg.tar.gz").exists(), reason="no ../shared/data/cifar10-jpeg.tar.gz")
def test_cifar10_subset_job(server, worker, alice):
    path = str(SHARED_DATA / "cifar10-jpeg.tar.gz")
    # Training on a 128-image subset; the evaluations (on all 60,000 images) are left out for time.
    job = submit(server, alice, method="simclr", dataset={"name": "cifar10", "path": path}, config=TINY, evaluate=[])
    read_events(server, f"/v1/jobs/{job['id']}/events", alice, timeout=300)
    done = get(server, f"/v1/jobs/{job['id']}", alice).json()
    assert done["status"] == "succeeded", done["error"]
    assert done["config"]["data"] == path and done["result"]["steps"] == 4
    [checkpoint] = get(server, "/v1/checkpoints", alice, job=job["id"]).json()
    full = torch.load(io.BytesIO(get(server, checkpoint["download"], alice).content), weights_only=False)
    assert full["config"]["dataset"] == "cifar10" and full["image_size"] == 32


def test_delete_a_finished_job_with_its_rows_and_files(server, worker, client, settings, alice, bob_headers):
    job = submit(server, alice, method="simclr", config={**TINY, "checkpoint_every": 1}, name="to delete")
    keep = submit(server, alice, method="simclr", config=TINY, evaluate=[])
    read_events(server, f"/v1/jobs/{job['id']}/events", alice, timeout=180)
    read_events(server, f"/v1/jobs/{keep['id']}/events", alice, timeout=180)
    files = settings.artifacts.folder / "jobs" / job["id"]
    assert get(server, "/v1/checkpoints", alice, job=job["id"]).json()
    assert any((files / "checkpoints").glob("*.pt")) and (files / "job.log").is_file()
    assert get(server, "/v1/evaluations", alice, job=job["id"]).json()

    # A queued job is not deleted, nor one whose checkpoint a queued evaluation job reads
    # (``client`` is an API whose queue no worker reads, on the same database).
    queued = client.post(
        "/v1/jobs", json={"kind": "pretrain", "method": "simclr", "dataset": {"name": "synthetic"}}, headers=alice
    ).json()
    refused = httpx.delete(f"{server}/v1/jobs/{queued['id']}", headers=alice)
    assert refused.status_code == 409 and "queued" in refused.json()["detail"]
    reader = client.post("/v1/jobs", json={"kind": "eval", "job": job["id"], "evaluate": ["knn"]}, headers=alice)
    assert reader.status_code == 202, reader.text
    refused = httpx.delete(f"{server}/v1/jobs/{job['id']}", headers=alice)
    assert refused.status_code == 409 and reader.json()["id"] in refused.json()["detail"]
    # Another owner cannot see it, let alone delete it.
    assert httpx.delete(f"{server}/v1/jobs/{job['id']}", headers=bob_headers).status_code == 404
    assert files.is_dir() and get(server, f"/v1/jobs/{job['id']}", alice).json()["status"] == "succeeded"

    assert client.post(f"/v1/jobs/{reader.json()['id']}/cancel", headers=alice).status_code == 202
    assert client.post(f"/v1/jobs/{queued['id']}/cancel", headers=alice).status_code == 202
    deleted = httpx.delete(f"{server}/v1/jobs/{job['id']}", headers=alice)
    assert deleted.status_code == 204, deleted.text
    assert httpx.get(f"{server}/v1/jobs/{job['id']}", headers=alice).status_code == 404
    assert httpx.get(f"{server}/v1/jobs/{job['id']}/metrics", headers=alice).status_code == 404
    assert get(server, "/v1/checkpoints", alice, job=job["id"]).json() == []
    assert get(server, "/v1/evaluations", alice, job=job["id"]).json() == []
    assert get(server, "/v1/jobs", alice, name="to delete").json()["items"] == []
    assert not files.exists()
    assert httpx.delete(f"{server}/v1/jobs/{job['id']}", headers=alice).status_code == 404
    # Nothing else went with it.
    assert get(server, f"/v1/jobs/{keep['id']}", alice).json()["status"] == "succeeded"
    assert get(server, "/v1/checkpoints", alice, job=keep["id"]).json()
    assert (settings.artifacts.folder / "jobs" / keep["id"]).is_dir()
    assert get(server, f"/v1/jobs/{reader.json()['id']}", alice).json()["status"] == "cancelled"

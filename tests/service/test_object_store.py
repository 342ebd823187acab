"""Artifacts in object storage: the API and a worker as separate processes with
CSSL_ARTIFACT_ROOT=s3://bucket/prefix against a real S3 HTTP endpoint (moto's server, the ``s3``
fixture), and the CLI reading and writing s3:// URLs."""

from __future__ import annotations

import io
import json
import shutil
import signal
import tempfile
from pathlib import Path

import httpx
import pytest
import torch

from .support import STATE_DIR, TINY, needs_servers, start_api, start_worker, wait_for


@pytest.fixture(scope="module")
def s3_service(s3, service_env, tmp_path_factory):
    """An API and a worker whose artifact root is s3://lab-models/service, on a queue of their own."""
    env = {
        **service_env,
        **s3.env,
        "CSSL_ARTIFACT_ROOT": f"s3://{s3.bucket}/service",
        "CSSL_QUEUE": service_env["CSSL_QUEUE"] + "_s3",
    }
    logs = tmp_path_factory.mktemp("s3-service")
    api, base = start_api(env, logs / "api.log")
    yield env, base, logs
    api.stop()


def submit(base, headers, config) -> dict:
    body = {"kind": "pretrain", "method": "simclr", "dataset": {"name": "synthetic"}, "config": config, "evaluate": []}
    response = httpx.post(f"{base}/v1/jobs", json=body, headers=headers, timeout=30)
    assert response.status_code == 202, response.text
    return response.json()


def finished(base, headers, job_id, timeout=240) -> dict:
    def ended():
        job = httpx.get(f"{base}/v1/jobs/{job_id}", headers=headers, timeout=30).json()
        return job if job["status"] not in ("queued", "running") else None

    return wait_for(ended, timeout=timeout, interval=0.5, message=f"job {job_id} to end")


def objects(s3, prefix: str) -> dict[str, int]:
    """Name (under ``prefix``) -> size of every object there."""
    found = s3.fs.find(f"{s3.bucket}/{prefix}", detail=True)
    return {name.removeprefix(f"{s3.bucket}/{prefix}/"): info["size"] for name, info in found.items()}


def test_a_jobs_checkpoints_land_in_the_bucket_and_download_through_the_api(s3, s3_service, alice):
    env, base, logs = s3_service
    job = submit(base, alice, {**TINY, "epochs": 2, "checkpoint_every": 1})
    worker = start_worker(env, logs / "worker.log", "s3w1")
    try:
        done = finished(base, alice, job["id"])
    finally:
        worker.stop(signal.SIGQUIT)
    assert done["status"] == "succeeded", (done, worker.output()[-3000:])
    prefix = f"service/jobs/{job['id']}"
    stored = objects(s3, prefix)
    # Only whole objects under their final names: no temporary object left behind.
    assert set(stored) == {"checkpoints/epoch_0001.pt", "checkpoints/epoch_0002.pt", "checkpoints/last.pt", "job.log"}
    assert done["result"]["checkpoint"] == f"jobs/{job['id']}/checkpoints/epoch_0002.pt"
    # The worker kept no local copies once the job ended.
    assert not (Path(STATE_DIR) / "artifact-cache" / "jobs" / job["id"]).exists()

    checkpoints = httpx.get(f"{base}/v1/checkpoints", params={"job": job["id"]}, headers=alice, timeout=30).json()
    assert sorted(c["epoch"] for c in checkpoints) == [1, 2]
    for checkpoint in checkpoints:
        name = f"checkpoints/epoch_{checkpoint['epoch']:04d}.pt"
        assert checkpoint["size_bytes"] == stored[name]
        url = f"{base}/v1/checkpoints/{checkpoint['id']}/download"
        response = httpx.get(url, headers=alice, timeout=60)
        assert response.status_code == 200
        assert response.headers["content-length"] == str(stored[name])
        assert response.content == s3.fs.cat(f"{s3.bucket}/{prefix}/{name}")
    newest = s3.fs.cat(f"{s3.bucket}/{prefix}/checkpoints/epoch_0002.pt")
    assert s3.fs.cat(f"{s3.bucket}/{prefix}/checkpoints/last.pt") == newest

    # One byte range, and a range past the end.
    part = httpx.get(url, headers={**alice, "Range": "bytes=100-199"}, timeout=60)
    assert part.status_code == 206 and part.content == response.content[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(response.content)}"
    tail = httpx.get(url, headers={**alice, "Range": "bytes=-10"}, timeout=60)
    assert tail.status_code == 206 and tail.content == response.content[-10:]
    beyond = httpx.get(url, headers={**alice, "Range": f"bytes={len(response.content)}-"}, timeout=60)
    assert beyond.status_code == 416

    backbone = httpx.get(url, params={"format": "torchvision"}, headers=alice, timeout=120)
    assert backbone.status_code == 200
    state = torch.load(io.BytesIO(backbone.content), weights_only=True)
    assert state and all(isinstance(value, torch.Tensor) for value in state.values())

    text = httpx.get(f"{base}/v1/jobs/{job['id']}/logs", headers=alice, timeout=30).text
    assert "checkpoint epoch_0002.pt" in text and f"job {job['id']} succeeded" in text

    # A recorded checkpoint whose object went away is gone (410), not an error.
    s3.fs.rm(f"{s3.bucket}/{prefix}/checkpoints/epoch_0001.pt")
    first = next(c for c in checkpoints if c["epoch"] == 1)
    missing = httpx.get(f"{base}/v1/checkpoints/{first['id']}/download", headers=alice, timeout=30)
    assert missing.status_code == 410

    # Deleting the job deletes its objects, and only its.
    s3.fs.pipe(f"{s3.bucket}/service/jobs/{job['id']}0/kept", b"another job's file")
    assert httpx.delete(f"{base}/v1/jobs/{job['id']}", headers=alice, timeout=60).status_code == 204
    assert objects(s3, prefix) == {}
    assert s3.fs.cat(f"{s3.bucket}/service/jobs/{job['id']}0/kept") == b"another job's file"


@needs_servers("a lost worker's message is redelivered differently on the file queue")
def test_a_job_resumes_from_its_s3_checkpoint_after_its_worker_is_killed(s3, s3_service, alice, settings):
    from store import jobs, records
    from store.db import session_scope

    def newest_step() -> int:
        with session_scope(settings.database_url) as session:
            newest = records.latest_checkpoint(session, job["id"])
            return newest.step if newest else 0

    def progress() -> int:
        with session_scope(settings.database_url) as session:
            return (jobs.get_job(session, job["id"]).progress or {}).get("step", 0)

    env, base, logs = s3_service
    steps_per_epoch = TINY["subset"] // TINY["batch_size"]
    job = submit(base, alice, {**TINY, "epochs": 6, "checkpoint_every": 1})
    worker = start_worker(env, logs / "killed.log", "s3k1")
    step = wait_for(lambda: newest_step(), timeout=120, interval=0.05, message="a first checkpoint")
    wait_for(lambda: progress() >= step + steps_per_epoch // 2, timeout=60, interval=0.02, message="mid-epoch")
    worker.popen.send_signal(signal.SIGKILL)
    worker.popen.wait()
    worker.handle.close()
    # The next worker finds no local copy: it must download the checkpoint from the bucket.
    shutil.rmtree(Path(STATE_DIR) / "artifact-cache" / "jobs" / job["id"], ignore_errors=True)
    worker = start_worker(env, logs / "resumed.log", "s3k2")
    try:
        done = finished(base, alice, job["id"])
    finally:
        worker.stop(signal.SIGQUIT)
    assert done["status"] == "succeeded" and done["attempt"] == 2, done
    assert done["result"]["steps"] == 6 * steps_per_epoch
    text = httpx.get(f"{base}/v1/jobs/{job['id']}/logs", headers=alice, timeout=30).text
    # Both attempts' lines are in the one log in the bucket.
    assert "attempt 1 on" in text and "attempt 2 on" in text
    assert f"resuming from jobs/{job['id']}/checkpoints/epoch_" in text
    # Exact resume: the same weights as a run that was never interrupted.
    final = torch.load(io.BytesIO(s3.fs.cat(f"{s3.bucket}/service/{done['result']['checkpoint']}")), weights_only=True)[
        "model"
    ]
    assert _same(final, _uninterrupted(done))


def _uninterrupted(job: dict) -> dict[str, torch.Tensor]:
    from cssl_core.config import build_config
    from cssl_core.train import load_checkpoint, pretrain

    with tempfile.TemporaryDirectory() as out:
        return load_checkpoint(pretrain(build_config(job["method"], job["config"]), out).checkpoint)["model"]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def test_the_cli_trains_to_evaluates_exports_and_resumes_from_s3_urls(s3, capsys):
    from cli.main import main as cssl

    run = f"s3://{s3.bucket}/cli"
    options = ["--method", "simclr", "--dataset", "synthetic", "--backbone", "small", "--batch-size", "32"]
    options += ["--subset", "128", "--precision", "fp32", "--checkpoint-every", "1"]
    assert cssl(["pretrain", *options, "--epochs", "2", "--out", run]) == 0
    out = capsys.readouterr().out
    assert f"checkpoint: {run}/checkpoints/epoch_0002.pt" in out
    assert f"eval {run}/checkpoints/last.pt" in out
    stored = objects(s3, "cli")
    names = {"config.json", "provenance.json", "checkpoints/epoch_0001.pt", "checkpoints/epoch_0002.pt"}
    names.add("checkpoints/last.pt")
    assert set(stored) == names
    assert stored["checkpoints/last.pt"] == stored["checkpoints/epoch_0002.pt"]

    assert cssl(["eval", f"{run}/checkpoints/last.pt", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["protocol"] == "knn" and result["epoch"] == 2 and 0 <= result["top1"] <= 100

    assert cssl(["export", f"{run}/checkpoints/last.pt", "--out", f"{run}/backbone.pt"]) == 0
    backbone = torch.load(io.BytesIO(s3.fs.cat(f"{s3.bucket}/cli/backbone.pt")), weights_only=True)
    assert backbone and all(isinstance(value, torch.Tensor) for value in backbone.values())

    # Resumed from the first epoch's object, the second epoch ends where the first run's did.
    resumed = f"s3://{s3.bucket}/cli-resumed"
    assert cssl(["pretrain", "--resume", f"{run}/checkpoints/epoch_0001.pt", "--out", resumed]) == 0
    capsys.readouterr()

    def model(key: str) -> dict[str, torch.Tensor]:
        return torch.load(io.BytesIO(s3.fs.cat(f"{s3.bucket}/{key}")), weights_only=True)["model"]

    assert _same(model("cli-resumed/checkpoints/last.pt"), model("cli/checkpoints/last.pt"))

    assert cssl(["eval", f"{run}/checkpoints/nothing.pt"]) == 2
    assert f"checkpoint not found: {run}/checkpoints/nothing.pt" in capsys.readouterr().err


def test_a_recorded_path_never_leads_out_of_the_s3_root(s3, settings, tokens):
    from fastapi.testclient import TestClient

    from api.main import create_app
    from store import records
    from store.db import session_scope

    from .support import auth

    alice = auth(tokens["alice"])
    s3.fs.pipe(f"{s3.bucket}/elsewhere/secret.pt", b"not for download")
    own = settings.with_(artifact_root=f"s3://{s3.bucket}/service", queue=settings.queue + "_idle")
    with TestClient(create_app(own, sweep=False)) as client:
        body = {"kind": "pretrain", "method": "simclr", "dataset": {"name": "synthetic"}, "config": TINY}
        job = client.post("/v1/jobs", json={**body, "evaluate": []}, headers=alice).json()
        outside = ["../elsewhere/secret.pt", f"jobs/{job['id']}/../../../elsewhere/secret.pt", "/elsewhere/secret.pt"]
        with session_scope(settings.database_url) as session:
            ids = [
                records.record_checkpoint(session, job["id"], path, epoch=1, step=n, final=False, size_bytes=16).id
                for n, path in enumerate(outside)
            ]
        for checkpoint_id in ids:
            response = client.get(f"/v1/checkpoints/{checkpoint_id}/download", headers=alice)
            assert response.status_code == 410 and b"not for download" not in response.content


@pytest.fixture(scope="module")
def bucket_data_service(s3, service_env, tmp_path_factory):
    """An API and a worker whose data roots include the bucket prefix s3://lab-models/data."""
    env = {
        **service_env,
        **s3.env,
        "CSSL_DATA_ROOTS": f"{service_env['CSSL_DATA_ROOTS']},s3://{s3.bucket}/data",
        "CSSL_QUEUE": service_env["CSSL_QUEUE"] + "_s3data",
    }
    logs = tmp_path_factory.mktemp("s3-data")
    api, base = start_api(env, logs / "api.log")
    yield env, base, logs
    api.stop()


def test_a_job_trains_on_webdataset_shards_under_a_bucket_data_root(s3, bucket_data_service, alice, tmp_path):
    import numpy as np
    from PIL import Image

    from cli.main import main as cssl

    env, base, logs = bucket_data_service
    rng = np.random.default_rng(0)
    for split, count in (("train", 16), ("test", 4)):
        for label, name in enumerate(("a", "b")):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (int(rng.integers(30, 60)), 40, 3), dtype=np.uint8)
                pixels[..., label] //= 2
                Image.fromarray(pixels).save(tmp_path / split / name / f"{i}.jpg")
    url = f"s3://{s3.bucket}/data/shapes"
    assert cssl(["data", "shard", str(tmp_path), url, "--max-count", "8"]) == 0

    config = {"backbone": "small", "epochs": 1, "batch_size": 16, "image_size": 32, "precision": "fp32"}
    body = {"kind": "pretrain", "method": "simclr", "config": {**config, "data_workers": 1}, "evaluate": ["knn"]}
    for outside in (f"s3://{s3.bucket}/elsewhere/shapes", f"s3://{s3.bucket}/data/../elsewhere/shapes"):
        refused = httpx.post(
            f"{base}/v1/jobs", json={**body, "dataset": {"name": "webdataset", "path": outside}}, headers=alice
        )
        assert refused.status_code == 422 and "body.dataset.path" in refused.json()["detail"], refused.text
    response = httpx.post(
        f"{base}/v1/jobs", json={**body, "dataset": {"name": "webdataset", "path": url}}, headers=alice, timeout=30
    )
    assert response.status_code == 202, response.text
    worker = start_worker(env, logs / "worker.log", "s3d1")
    try:
        done = finished(base, alice, response.json()["id"])
    finally:
        worker.stop(signal.SIGQUIT)
    assert done["status"] == "succeeded", (done, worker.output()[-3000:])
    assert done["provenance"]["data"]["path"] == url and done["provenance"]["data"]["files"] == 40
    assert done["latest_metrics"]["knn_top1"] is not None  # kNN on the shards' test split

"""Tracking sinks through a real worker: a job mirrored to a real MLflow tracking server and to an
offline W&B run, a sink that fails without failing the job, a later attempt that continues the
same runs, and the per-job overrides checked at submission. W&B never leaves this machine:
offline mode, its folders under the test's temporary ones, no login."""

from __future__ import annotations

import json
import signal
import struct
import sys
from pathlib import Path

import httpx
import pytest

from cli.processes import free_port, wait_until_ready

from .support import TINY, Process, read_events, start_worker

MLFLOW = Path(sys.executable).with_name("mlflow")
EXPERIMENT = "cssl-test"
PROJECT = "cssl-test"


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real ``mlflow server`` (SQLite store, local artifacts) on a free port."""
    if not MLFLOW.exists():
        pytest.skip(f"no {MLFLOW}: the `mlflow server` command comes with the dev extra")
    folder = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    argv = [str(MLFLOW), "server", "--backend-store-uri", f"sqlite:///{folder}/mlflow.db"]
    argv += ["--default-artifact-root", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port)]
    # Without its job runner (background processes for GenAI scoring), which this test has no use for.
    process = Process([*argv, "--workers", "1"], {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, folder / "mlflow.log")
    base = f"http://127.0.0.1:{port}"
    if not wait_until_ready(f"{base}/health", process.popen, timeout=120):
        process.stop()
        raise AssertionError(f"mlflow server did not start:\n{process.output()[-3000:]}")
    # The server finishes starting on its first request: made now, it does not compete with a job.
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=base).search_experiments()
    yield base
    process.stop()


@pytest.fixture(scope="module")
def wandb_env(tmp_path_factory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("wandb")
    return {
        "CSSL_WANDB_PROJECT": PROJECT,
        "CSSL_WANDB_MODE": "offline",
        "CSSL_WANDB_DIR": str(home / "runs"),
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_API_KEY": "",
        "WANDB_CONFIG_DIR": str(home / "config"),
        "WANDB_CACHE_DIR": str(home / "cache"),
        "WANDB_DATA_DIR": str(home / "data"),
    }


@pytest.fixture(scope="module")
def tracking_worker(service_env, mlflow_server, wandb_env, tmp_path_factory):
    """A worker whose service settings name the MLflow server and an offline W&B project."""
    env = {**service_env, **wandb_env, "CSSL_MLFLOW_TRACKING_URI": mlflow_server, "CSSL_MLFLOW_EXPERIMENT": EXPERIMENT}
    process = start_worker(env, tmp_path_factory.mktemp("worker") / "worker.log", "tracking")
    yield process
    process.stop(signal.SIGQUIT)


def submit(base, headers, **body) -> str:
    body = {"kind": "pretrain", "method": "simclr", "dataset": {"name": "synthetic"}, **body}
    response = httpx.post(f"{base}/v1/jobs", json=body, headers=headers)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def run_to_the_end(base, headers, job_id) -> list[dict]:
    events = read_events(base, f"/v1/jobs/{job_id}/events", headers, timeout=240)
    states = [e["data"]["status"] for e in events if e["event"] == "state"]
    assert states[-1] == "succeeded", events
    return events


def mlflow_run(tracking_uri: str, job_id: str):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`cssl.job_id` = '{job_id}'")
    assert len(runs) == 1, runs
    return client, runs[0]


def wandb_records(path: Path):
    """The records of a W&B ``.wandb`` file: LevelDB's log format (32 KiB blocks of chunks with a
    7-byte header: crc32c, length, type), after a 7-byte file header, each a protobuf ``Record``."""
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    position, pending = 7, b""
    while position + 7 <= len(data):
        if block - position % block < 7:  # the rest of a block too short for a header is padding
            position += block - position % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[position : position + 7])
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def test_a_job_is_mirrored_to_mlflow_and_wandb(server, tracking_worker, mlflow_server, wandb_env, alice):
    job_id = submit(server, alice, config={**TINY, "knn": {"k": 7}}, evaluate=["knn"])
    events = run_to_the_end(server, alice, job_id)
    assert not [e for e in events if e["event"] == "warning"], events
    series = httpx.get(f"{server}/v1/jobs/{job_id}/metrics", headers=alice).json()["series"]
    steps = [point["step"] for point in series["loss"]]
    assert steps == [1, 2, 3, 4]
    (knn,) = [e for e in httpx.get(f"{server}/v1/evaluations", headers=alice, params={"job": job_id}).json()]
    (checkpoint,) = httpx.get(f"{server}/v1/checkpoints", headers=alice, params={"job": job_id}).json()

    client, run = mlflow_run(mlflow_server, job_id)
    assert run.info.status == "FINISHED" and run.info.run_name == job_id
    params, tags = run.data.params, run.data.tags
    assert (params["method"], params["backbone"], params["batch_size"], params["knn.k"]) == (
        "simclr",
        "small",
        "32",
        "7",
    )
    assert "tracking" not in params
    assert (tags["cssl.method"], tags["cssl.dataset"], tags["cssl.owner"]) == ("simclr", "synthetic", "alice")
    loss = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in loss] == steps
    assert [m.value for m in loss] == pytest.approx([p["value"] for p in series["loss"]])
    (top1,) = client.get_metric_history(run.info.run_id, "knn_top1")
    assert (top1.value, top1.step) == (pytest.approx(knn["top1"]), 4)
    artifacts = client.list_artifacts(run.info.run_id, "checkpoints")
    assert [a.file_size for a in artifacts] == [checkpoint["size_bytes"]]  # the final checkpoint

    (folder,) = Path(wandb_env["CSSL_WANDB_DIR"], "wandb").glob(f"offline-run-*-{job_id}")
    records = list(wandb_records(folder / f"run-{job_id}.wandb"))
    (run_record,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (run_record.run_id, run_record.project) == (job_id, PROJECT)
    config = {item.key: json.loads(item.value_json) for item in run_record.config.update}
    assert (config["method"], config["batch_size"], config["knn.k"]) == ("simclr", 32, 7)
    history = [
        {item.nested_key[0] if item.nested_key else item.key: json.loads(item.value_json) for item in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    assert [row["_step"] for row in history if "loss" in row] == steps
    assert [row["loss"] for row in history if "loss" in row] == pytest.approx([p["value"] for p in series["loss"]])
    assert [row["knn_top1"] for row in history if "knn_top1" in row] == [pytest.approx(knn["top1"])]
    (exit_record,) = [r.exit for r in records if r.WhichOneof("record_type") == "exit"]
    assert exit_record.exit_code == 0


def test_a_failing_sink_leaves_the_job_to_succeed_with_one_warning(server, tracking_worker, alice):
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    tracking = {"mlflow": {"tracking_uri": closed}, "wandb": False}
    job_id = submit(server, alice, config=TINY, evaluate=["knn"], tracking=tracking)
    events = run_to_the_end(server, alice, job_id)
    (warning,) = [e["data"] for e in events if e["event"] == "warning"]
    assert warning["sink"] == "mlflow" and warning["message"].startswith("mlflow tracking failed on start (")
    assert closed.removeprefix("http://") in warning["message"]
    job = httpx.get(f"{server}/v1/jobs/{job_id}", headers=alice).json()
    assert job["config"]["tracking"] == tracking and job["error"] is None


def test_a_later_attempt_continues_the_same_runs(mlflow_server, wandb_env, tmp_path, monkeypatch):
    from cssl_core.evaluation import EvalResult
    from worker.runner import ClaimedJob
    from worker.tracking import MlflowSink, Tracking, WandbSink

    for name, value in wandb_env.items():
        monkeypatch.setenv(name, value)
    job = ClaimedJob(
        id="ab" * 16,
        kind="pretrain",
        method="byol",
        dataset="synthetic",
        dataset_path=None,
        config={"method": "byol", "epochs": 2, "tracking": {"wandb": False}},
        evaluate=["knn"],
        attempt=1,
        source_checkpoint=None,
        source_checkpoint_id=None,
        resume_from=None,
        resume_checkpoint_id=None,
        resume_is_final=False,
        owner="alice",
        name="byol on noise",
        tags={"team": "vision"},
    )
    runs = []
    for attempt, steps, status in ((1, (1, 2), "released"), (2, (3, 4), "succeeded")):
        attempt_job = ClaimedJob(**{**job.__dict__, "attempt": attempt})
        sinks = [MlflowSink(mlflow_server, EXPERIMENT), WandbSink(PROJECT, "offline", tmp_path)]
        tracking = Tracking(sinks)
        tracking.start(attempt_job)
        for step in steps:
            tracking.log_metrics(step, {"loss": 1.0 / step, "lr": None})
        tracking.log_evaluation(EvalResult("knn", 50.0, None, {}, "synthetic", 10, 10, epoch=attempt))
        tracking.finish(status)
        assert tracking.take_failures() == [] and len(tracking.sinks) == 2
        runs.append(sinks[0].run_id)
    assert runs[0] == runs[1]

    client, run = mlflow_run(mlflow_server, job.id)
    assert run.info.status == "FINISHED" and run.info.run_name == "byol on noise"
    assert (run.data.tags["team"], run.data.tags["cssl.attempt"], run.data.params["epochs"]) == ("vision", "2", "2")
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3, 4]
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "knn_top1")] == [(2, 50.0), (4, 50.0)]
    folders = sorted(Path(tmp_path, "wandb").glob(f"offline-run-*-{job.id}"))
    assert len(folders) >= 1  # two attempts in one second share a folder
    records = [r for folder in folders for r in wandb_records(folder / f"run-{job.id}.wandb")]
    assert {r.run.run_id for r in records if r.WhichOneof("record_type") == "run"} == {job.id}


@pytest.mark.parametrize(
    "tracking, loc, message",
    [
        ({"mlflow": {"tracking_uri": "file:///etc"}}, "mlflow.tracking_uri", "scheme is one of http, https"),
        ({"mlflow": {"tracking_uri": "http://ops:pw@mlflow:5000"}}, "mlflow.tracking_uri", "MLFLOW_TRACKING_PASSWORD"),
        ({"mlflow": {"experiment": "ablations"}}, "mlflow.tracking_uri", "CSSL_MLFLOW_TRACKING_URI is unset"),
        ({"mlflow": True}, "mlflow", "or false to turn it off"),
        ({"wandb": {"project": "a/b"}}, "wandb.project", "should match pattern"),
        ({"wandb": {"project": "p", "mode": "sometimes"}}, "wandb.mode", "'online' or 'offline'"),
        ({"neptune": {}}, "neptune", "Extra inputs are not permitted"),
    ],
)
def test_a_bad_tracking_override_is_a_422_naming_the_field(client, alice, tracking, loc, message):
    body = {"method": "simclr", "dataset": {"name": "synthetic"}, "config": TINY, "tracking": tracking}
    response = client.post("/v1/jobs", json=body, headers=alice)
    assert response.status_code == 422, response.text
    (error,) = response.json()["errors"]
    assert ".".join(map(str, error["loc"])) == f"body.tracking.{loc}" and message in error["msg"], error


def test_a_tracking_override_is_kept_in_the_jobs_config(client, alice):
    tracking = {"mlflow": {"tracking_uri": "https://mlflow.example:5000", "experiment": "ablations"}, "wandb": False}
    body = {"method": "simclr", "dataset": {"name": "synthetic"}, "config": TINY, "tracking": tracking}
    response = client.post("/v1/jobs", json=body, headers=alice)
    assert response.status_code == 202, response.text
    assert response.json()["config"]["tracking"] == tracking

"""The routes a dashboard reads, in-process against the real database: metric series cut for a
plot without losing their spikes, with wall time."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
from sqlalchemy import insert

from store import records
from store.db import session_scope
from store.models import Job, MetricPoint, utcnow

from .support import EMBEDDED, auth

STEPS = 5000
SPIKE, DIP = 2345, 3777


def add_job(settings, owner: str = "alice", **fields) -> str:
    with session_scope(settings.database_url) as session:
        job = Job(
            owner=owner,
            **{
                "kind": "pretrain",
                "method": "simclr",
                "dataset": "synthetic",
                "config": {},
                "evaluate": [],
                "status": "succeeded",
                "started_at": utcnow(),
                **fields,
            },
        )
        session.add(job)
        session.flush()
        return job.id


def add_points(settings, job_id: str, values: list[dict], seconds_per_step: float = 0.1) -> None:
    """Steps 1..n with ``values[i]`` at step i + 1, each written ``seconds_per_step`` after the one before."""
    with session_scope(settings.database_url) as session:
        started = session.get(Job, job_id).started_at
        session.execute(
            insert(MetricPoint),
            [
                {
                    "job_id": job_id,
                    "step": i + 1,
                    "epoch": i // 1000,
                    "values": v,
                    "created_at": started + timedelta(seconds=seconds_per_step * (i + 1)),
                }
                for i, v in enumerate(values)
            ],
        )


@pytest.fixture(scope="module")
def long_run(settings) -> str:
    """A run of 5000 steps: a noisy falling loss with one spike up and one dip down, a constant
    lr, and a statistic reported on even steps only."""
    rng = np.random.default_rng(0)
    loss = 3 * np.exp(-np.arange(STEPS) / 2000) + rng.random(STEPS) * 0.05
    loss[SPIKE - 1], loss[DIP - 1] = 100.0, -50.0
    values = [
        {"loss": float(loss[i]), "lr": 0.1, **({"even": float(rng.random())} if (i + 1) % 2 == 0 else {})}
        for i in range(STEPS)
    ]
    job_id = add_job(settings)
    add_points(settings, job_id, values)
    with session_scope(settings.database_url) as session:
        for epoch in range(1, 61):  # periodic kNN, more evaluations than the points asked for
            records.record_evaluation(
                session,
                job_id,
                None,
                {
                    "protocol": "knn",
                    "top1": float(epoch),
                    "epoch": epoch,
                    "dataset": "synthetic",
                    "num_train": 1,
                    "num_test": 1,
                },
            )
    return job_id


def reference_steps(steps: list[int], values: list[float], points: int) -> list[int]:
    """The steps a cut to ``points`` keeps, bucket by bucket with a loop: the first and the last,
    and the earliest lowest and earliest highest value of each of (points - 2) // 2 step ranges."""
    if len(steps) <= points:
        return steps
    buckets, span = (points - 2) // 2, steps[-1] - steps[0] + 1
    kept = {steps[0], steps[-1]}
    for b in range(buckets):
        inside = [(v, s) for s, v in zip(steps, values) if (s - steps[0]) * buckets // span == b]
        if inside:
            kept.add(min(inside, key=lambda p: (p[0], p[1]))[1])
            kept.add(min(inside, key=lambda p: (-p[0], p[1]))[1])
    return sorted(kept)


def test_a_cut_series_keeps_spikes_ends_and_at_most_n_points(client, alice, long_run):
    full = client.get(f"/v1/jobs/{long_run}/metrics", headers=alice).json()["series"]
    assert [len(full[name]) for name in ("loss", "lr", "even", "knn_top1")] == [STEPS, STEPS, STEPS // 2, 60]
    for points in (2, 3, 10, 101, 400):
        response = client.get(f"/v1/jobs/{long_run}/metrics", params={"points": points}, headers=alice)
        assert response.status_code == 200, response.text
        series = response.json()["series"]
        assert series["knn_top1"] == full["knn_top1"]  # one per evaluation epoch: whole
        for name in ("loss", "lr", "even"):
            cut = series[name]
            steps = [p["step"] for p in cut]
            assert len(cut) <= points and steps == sorted(set(steps)), (name, points)
            assert steps[0] == full[name][0]["step"] and steps[-1] == full[name][-1]["step"]
            by_step = {p["step"]: p for p in full[name]}
            assert all(p == by_step[p["step"]] for p in cut)  # real points, with their epoch, value and time
            expected = reference_steps([p["step"] for p in full[name]], [p["value"] for p in full[name]], points)
            assert steps == expected, (name, points)
        if points >= 4:
            assert {SPIKE, DIP} <= {p["step"] for p in series["loss"]}


def test_points_carry_wall_time_since_the_job_was_first_claimed(client, alice, long_run):
    series = client.get(f"/v1/jobs/{long_run}/metrics", params={"points": 200}, headers=alice).json()["series"]
    for name in ("loss", "even"):
        times = [p["time"] for p in series[name]]
        assert times == sorted(times)
        assert times == [pytest.approx(0.1 * p["step"], abs=1e-3) for p in series[name]]
    knn = series["knn_top1"]
    assert all(p["step"] is None and p["time"] >= 0 for p in knn)
    assert [p["time"] for p in knn] == sorted(p["time"] for p in knn)


def test_null_values_and_the_limits_of_points(client, alice, settings):
    job_id = add_job(settings)
    add_points(settings, job_id, [{"loss": None}] + [{"loss": float(i % 7)} for i in range(1, 20)] + [{"loss": None}])
    full = client.get(f"/v1/jobs/{job_id}/metrics", headers=alice).json()["series"]["loss"]
    assert full[0]["value"] is None and full[-1]["value"] is None and len(full) == 21
    cut = client.get(f"/v1/jobs/{job_id}/metrics", params={"points": 6}, headers=alice).json()["series"]["loss"]
    # The first and last points are kept though null; no bucket's extreme is.
    assert [p["value"] for p in cut if p["value"] is None] == [None, None] and len(cut) <= 6
    for points in (0, 1, 100_001, "many"):
        response = client.get(f"/v1/jobs/{job_id}/metrics", params={"points": points}, headers=alice)
        assert response.status_code == 422, (points, response.text)
    assert client.get(f"/v1/jobs/{job_id}/metrics", params={"points": 100_000}, headers=alice).status_code == 200


def test_a_job_not_yet_started_has_no_times(client, alice, settings):
    job_id = add_job(settings, status="queued", started_at=None)
    with session_scope(settings.database_url) as session:
        session.execute(insert(MetricPoint), [{"job_id": job_id, "step": 1, "epoch": 0, "values": {"loss": 1.0}}])
    assert client.get(f"/v1/jobs/{job_id}/metrics", headers=alice).json()["series"]["loss"] == [
        {"step": 1, "epoch": 0, "value": 1.0, "time": None}
    ]


@pytest.mark.skipif(EMBEDDED, reason="the binary read is Postgres's; the embedded backend reads the other way")
def test_both_ways_of_reading_the_columns_agree(settings, long_run):
    from store.series import read_columns_portable, read_columns_postgres

    job_id = add_job(settings)
    add_points(settings, job_id, [{"a": 1.5, "b": None}, {"b": 2}, {"a": -3.25}, {}, {"a": 1e-300, "b": 7}])
    for job in (long_run, job_id):
        with session_scope(settings.database_url) as session:
            fast, portable = read_columns_postgres(session, job), read_columns_portable(session, job)
        for column in ("steps", "epochs", "at"):
            np.testing.assert_array_equal(getattr(fast, column), getattr(portable, column))
        assert fast.series.keys() == portable.series.keys()
        for name, (rows, values) in fast.series.items():
            np.testing.assert_array_equal(rows, portable.series[name][0])
            np.testing.assert_array_equal(values, portable.series[name][1])  # NaN (null) where the other has NaN
    assert fast.series["b"][0].tolist() == [0, 1, 4] and np.isnan(fast.series["b"][1][0])


def add_checkpoint(settings, job_id: str, *, final: bool = True, epoch: int = 10) -> int:
    with session_scope(settings.database_url) as session:
        return records.record_checkpoint(
            session,
            job_id,
            f"jobs/{job_id}/epoch{epoch}-{final}.pt",
            epoch=epoch,
            step=epoch * 10,
            final=final,
            size_bytes=1,
        ).id


def add_evaluation(
    settings,
    job_id: str,
    checkpoint_id: int | None,
    protocol: str,
    top1: float | None,
    dataset: str = "synthetic",
    top5: float | None = None,
) -> int:
    with session_scope(settings.database_url) as session:
        return records.record_evaluation(
            session,
            job_id,
            checkpoint_id,
            {
                "protocol": protocol,
                "top1": top1,
                "top5": top5,
                "epoch": 10,
                "dataset": dataset,
                "num_train": 1,
                "num_test": 1,
            },
        ).id


def pretrained(
    settings,
    owner: str,
    method: str,
    *,
    status: str = "succeeded",
    backbone: str = "small",
    batch_size: int = 256,
    seconds: float = 100.0,
) -> tuple[str, int]:
    """A pretrain job and its final checkpoint."""
    job_id = add_job(
        settings,
        owner,
        method=method,
        status=status,
        config={"backbone": backbone, "batch_size": batch_size},
        result={"train_seconds": seconds, "images_per_second": 10 * seconds, "epochs_completed": seconds / 10},
    )
    return job_id, add_checkpoint(settings, job_id)


@pytest.fixture(scope="module")
def leaderboard_owner(settings) -> tuple[dict, dict]:
    """An owner of their own (other tests' jobs stay out of it) with jobs to rank, and what their
    leaderboard should say, keyed by (data set, protocol, method)."""
    import uuid

    from store import tokens

    owner = f"board-{uuid.uuid4().hex[:8]}"
    with session_scope(settings.database_url) as session:
        token = tokens.create_token(session, owner)
    a, a_final = pretrained(settings, owner, "simclr", seconds=100)
    b, b_final = pretrained(settings, owner, "simclr", batch_size=512, seconds=200)
    c, c_final = pretrained(settings, owner, "byol", backbone="resnet18", seconds=300)
    add_evaluation(settings, a, a_final, "knn", 50.0)
    add_evaluation(settings, a, a_final, "linear", 60.0)
    add_evaluation(settings, a, None, "knn", 98.0)  # periodic kNN during training
    add_evaluation(settings, a, a_final, "embedding", None)  # no accuracy
    add_evaluation(settings, a, add_checkpoint(settings, a, final=False, epoch=5), "knn", 97.0)  # not the final one
    b_knn = add_evaluation(settings, b, b_final, "knn", 55.0, top5=90.0)
    add_evaluation(settings, b, b_final, "linear", 58.0)
    later, _ = pretrained(settings, owner, "simclr")
    add_evaluation(settings, later, _, "knn", 55.0)  # a tie: the earlier evaluation stays first
    # An eval job on a's final checkpoint: its result counts for a.
    a_linear = add_evaluation(
        settings, add_job(settings, owner, kind="eval", source_checkpoint_id=a_final), a_final, "linear", 65.0
    )
    c_knn = add_evaluation(settings, c, c_final, "knn", 40.0)
    c_cifar = add_evaluation(settings, c, c_final, "knn", 30.0, dataset="cifar10")
    failed, failed_final = pretrained(settings, owner, "simclr", status="failed")
    add_evaluation(settings, failed, failed_final, "knn", 99.0)
    theirs, theirs_final = pretrained(settings, f"{owner}-other", "simclr")
    add_evaluation(settings, theirs, theirs_final, "knn", 99.5)
    expected = {
        ("cifar10", "knn", "byol"): (c, c_final, c_cifar, 30.0),
        ("synthetic", "knn", "simclr"): (b, b_final, b_knn, 55.0),
        ("synthetic", "knn", "byol"): (c, c_final, c_knn, 40.0),
        ("synthetic", "linear", "simclr"): (a, a_final, a_linear, 65.0),
    }
    return auth(token), expected


def test_the_leaderboard_has_each_methods_best_final_result(client, leaderboard_owner):
    headers, expected = leaderboard_owner
    rows = client.get("/v1/leaderboard", headers=headers).json()
    assert [(r["dataset"], r["protocol"], r["method"]) for r in rows] == list(expected)  # sorted, best first
    for row in rows:
        job_id, checkpoint_id, evaluation_id, top1 = expected[row["dataset"], row["protocol"], row["method"]]
        assert (row["job_id"], row["checkpoint_id"], row["evaluation_id"], row["top1"]) == (
            job_id,
            checkpoint_id,
            evaluation_id,
            top1,
        )
    b = rows[1]
    assert b == {
        "method": "simclr",
        "dataset": "synthetic",
        "protocol": "knn",
        "backbone": "small",
        "top1": 55.0,
        "top5": 90.0,
        "job_id": b["job_id"],
        "checkpoint_id": b["checkpoint_id"],
        "evaluation_id": b["evaluation_id"],
        "train_seconds": 200.0,
        "images_per_second": 2000.0,
        "epochs": 20.0,
        "batch_size": 512,
        "group": None,
    }


@pytest.mark.parametrize(
    "params, keys",
    [
        (
            {"dataset": "synthetic"},
            [("synthetic", "knn", "simclr"), ("synthetic", "knn", "byol"), ("synthetic", "linear", "simclr")],
        ),
        ({"protocol": "linear"}, [("synthetic", "linear", "simclr")]),
        ({"backbone": "resnet18"}, [("cifar10", "knn", "byol"), ("synthetic", "knn", "byol")]),
        ({"backbone": "small", "protocol": "knn", "dataset": "synthetic"}, [("synthetic", "knn", "simclr")]),
        ({"dataset": "stl10"}, []),
    ],
)
def test_the_leaderboard_filters(client, leaderboard_owner, params, keys):
    headers, _ = leaderboard_owner
    rows = client.get("/v1/leaderboard", params=params, headers=headers).json()
    assert [(r["dataset"], r["protocol"], r["method"]) for r in rows] == keys


def test_the_leaderboard_ranks_each_device_apart_when_grouped_by_it(client, settings):
    import uuid

    from store import tokens

    owner = f"board-{uuid.uuid4().hex[:8]}"
    with session_scope(settings.database_url) as session:
        headers = auth(tokens.create_token(session, owner))
    for device, top1 in [("GPU A", 50.0), ("GPU A", 48.0), ("GPU B", 45.0), (None, 40.0)]:
        provenance = {"device": device, "torch": "2.14.1"} if device else None
        job_id = add_job(settings, owner, config={"backbone": "small"}, provenance=provenance)
        add_evaluation(settings, job_id, add_checkpoint(settings, job_id), "knn", top1)

    rows = client.get("/v1/leaderboard", headers=headers).json()
    assert [(r["top1"], r["group"]) for r in rows] == [(50.0, None)]
    rows = client.get("/v1/leaderboard", params={"group_by": "device"}, headers=headers).json()
    assert [(r["top1"], r["group"]) for r in rows] == [(50.0, "GPU A"), (45.0, "GPU B"), (40.0, None)]
    rows = client.get("/v1/leaderboard", params={"group_by": "torch"}, headers=headers).json()
    assert [(r["top1"], r["group"]) for r in rows] == [(50.0, "2.14.1"), (40.0, None)]
    assert client.get("/v1/leaderboard", params={"group_by": "data"}, headers=headers).status_code == 422


def test_the_leaderboard_refuses_unknown_protocols(client, leaderboard_owner):
    headers, _ = leaderboard_owner
    assert client.get("/v1/leaderboard", params={"protocol": "svm"}, headers=headers).status_code == 422
    assert client.get("/v1/leaderboard", params={"dataset": "a b"}, headers=headers).status_code == 422


def test_embeddings_through_the_worker(server, worker, tokens, alice):
    import httpx

    from .support import TINY, read_events

    def get(path, headers=alice, **params):
        response = httpx.get(server + path, headers=headers, params=params, timeout=60)
        assert response.status_code == 200, response.text
        return response.json()

    body = {
        "kind": "pretrain",
        "method": "simclr",
        "dataset": {"name": "synthetic"},
        "evaluate": ["knn", "embedding"],
        "config": {**TINY, "embedding": {"max_points": 50}},
    }
    job = httpx.post(f"{server}/v1/jobs", json=body, headers=alice).json()
    events = read_events(server, f"/v1/jobs/{job['id']}/events", alice, timeout=240)
    assert events[-2]["data"].get("status") == "succeeded", events[-3:]
    assert [
        e["data"]["top1"] for e in events if e["event"] == "evaluation" and e["data"]["protocol"] == "embedding"
    ] == [None]
    done = get(f"/v1/jobs/{job['id']}")
    assert "knn_top1" in done["latest_metrics"] and "embedding_top1" not in done["latest_metrics"]

    results = {e["protocol"]: e for e in get("/v1/evaluations", job=job["id"])}
    embedding = results["embedding"]
    assert (
        embedding["top1"] is None
        and embedding["top5"] is None
        and embedding["checkpoint_id"] == results["knn"]["checkpoint_id"]
    )
    assert embedding["num_test"] == 50 and embedding["parameters"]["max_points"] == 50
    extra = embedding["extra"]
    assert extra["reduction"] == "pca" and extra["classes"][0] == "disk" and len(extra["classes"]) == 10
    assert len(extra["points"]) == 50 and all(
        0 <= label < 10 and isinstance(x, float) for x, _, label in extra["points"]
    )
    assert get(f"/v1/evaluations/{embedding['id']}") == embedding
    missing = httpx.get(f"{server}/v1/evaluations/{embedding['id']}", headers=auth(tokens["bob"]))
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"
    # No accuracy, so no place on the leaderboard.
    assert all(row["protocol"] != "embedding" for row in get("/v1/leaderboard"))

    # As an eval job of its own, with t-SNE.
    again = httpx.post(
        f"{server}/v1/jobs",
        headers=alice,
        json={
            "kind": "eval",
            "job": job["id"],
            "evaluate": ["embedding"],
            "config": {"embedding": {"method": "tsne", "max_points": 40, "perplexity": 5, "seed": 1}},
        },
    ).json()
    read_events(server, f"/v1/jobs/{again['id']}/events", alice, timeout=240)
    assert get(f"/v1/jobs/{again['id']}")["status"] == "succeeded"
    [tsne] = get("/v1/evaluations", job=again["id"])
    assert tsne["extra"]["reduction"] == "tsne" and len(tsne["extra"]["points"]) == 40
    assert sorted(get("/v1/evaluations", job=again["id"], protocol="embedding"), key=lambda e: e["id"]) == [tsne]


def test_evaluations_filter_by_protocol(client, leaderboard_owner):
    headers, _ = leaderboard_owner
    linear = client.get("/v1/evaluations", params={"protocol": "linear"}, headers=headers).json()
    assert [(e["protocol"], e["top1"]) for e in linear] == [("linear", 60.0), ("linear", 58.0), ("linear", 65.0)]
    [embedding] = client.get("/v1/evaluations", params={"protocol": "embedding"}, headers=headers).json()
    assert embedding["top1"] is None
    assert client.get("/v1/evaluations", params={"protocol": "svm"}, headers=headers).status_code == 422

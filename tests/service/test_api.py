"""The HTTP API in-process against the real Postgres and Redis, with no worker: validation,
authentication, owner isolation, idempotency, cancelling queued jobs, re-publishing."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from .support import EMBEDDED, TINY, auth

PRETRAIN = {"kind": "pretrain", "method": "simclr", "dataset": {"name": "synthetic"}, "config": TINY, "evaluate": []}


@pytest.fixture()
def bob(tokens):
    return auth(tokens["bob"])


def submit(client, headers, body=PRETRAIN, **extra_headers):
    return client.post("/v1/jobs", json=body, headers={**headers, **extra_headers})


def assert_problem(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == status and problem["title"] and problem["detail"]
    return problem


def test_health_checks_need_no_token(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json() | {"warnings": []} == {
        "status": "ready",
        "database": "ok",
        "broker": "ok",
        "mode": "embedded" if EMBEDDED else "production",
        "authentication": "on",
        "warnings": [],
    }


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/methods", "/v1/datasets", "/v1/checkpoints", "/v1/evaluations"])
def test_every_other_route_needs_a_token(client, path):
    problem = assert_problem(client.get(path), 401)
    assert "cssl token create" in problem["detail"]
    assert_problem(client.get(path, headers=auth("cssl_not-a-token")), 401)


def test_submit_returns_202_with_location_and_the_resolved_config(client, alice):
    response = submit(client, alice)
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["attempt"] == 0
    # Defaults are filled in from the method's typed config (on these 32 px images its small-image
    # recipe), so the stored config reproduces the run.
    assert job["config"]["temperature"] == 0.2 and job["config"]["recipe"] == "small_images"
    assert job["config"]["epochs"] == 1
    assert client.get(response.headers["location"], headers=alice).json()["id"] == job["id"]


def test_a_pretrain_job_takes_parameters_for_its_final_evaluations(client, alice):
    body = {**PRETRAIN, "evaluate": ["knn", "linear"], "config": {**TINY, "knn": {"k": "20"}, "linear": {"epochs": 5}}}
    job = submit(client, alice, body).json()
    # Typed, kept as given; the protocols' other parameters keep their defaults.
    assert job["config"]["knn"] == {"k": 20} and job["config"]["linear"] == {"epochs": 5}
    # Told apart from the run's keys (temperature is SimCLR's and a knn parameter's name too).
    assert job["evaluation_parameters"] == {"knn": {"k": 20}, "linear": {"epochs": 5}}
    assert client.get(f"/v1/jobs/{job['id']}", headers=alice).json()["evaluation_parameters"] == {
        "knn": {"k": 20},
        "linear": {"epochs": 5},
    }
    plain = submit(client, alice).json()
    assert plain["evaluation_parameters"] == {} and "temperature" in plain["config"]


def test_semi_supervised_protocols_are_evaluations_too(client, alice):
    body = {
        **PRETRAIN,
        "evaluate": ["finetune", "distill"],
        "config": {**TINY, "finetune": {"label_fraction": "0.01"}, "distill": {"temperature": 2}},
    }
    job = submit(client, alice, body).json()
    assert job["evaluate"] == ["finetune", "distill"]
    assert job["config"]["finetune"] == {"label_fraction": 0.01} and job["config"]["distill"] == {"temperature": 2.0}


def test_dataset_options_are_config_keys(client, alice):
    body = {**PRETRAIN, "config": {"backbone": "small"}, "dataset": {"name": "synthetic", "options": {"subset": 64}}}
    assert submit(client, alice, body).json()["config"]["subset"] == 64


@pytest.mark.parametrize(
    "body, loc, words",
    [
        ({**PRETRAIN, "method": "simclrr"}, ["body", "method"], "known methods"),
        ({**PRETRAIN, "config": {"epochs": 1, "temprature": 0.2}}, ["body", "config", "temprature"], "valid options"),
        ({**PRETRAIN, "config": {"temprature": 0.2}}, ["body", "config", "temprature"], "(did you mean temperature?)"),
        ({**PRETRAIN, "config": {"epochs": -3}}, ["body", "config", "epochs"], "epochs must be in [1, 100000], got -3"),
        (
            {**PRETRAIN, "config": {"temperature": -1}},
            ["body", "config", "temperature"],
            "temperature must be greater than 0, got -1.0",
        ),
        (
            {**PRETRAIN, "config": {"temperature": 10**400}},
            ["body", "config", "temperature"],
            "temperature must be a finite number",
        ),
        (
            {**PRETRAIN, "config": {"sgd_momentum": 1e300}},
            ["body", "config", "sgd_momentum"],
            "sgd_momentum must be in [0, 1), got 1e+300",
        ),
        ({**PRETRAIN, "config": {"seed": 10**30}}, ["body", "config", "seed"], "seed must be in [0, 4294967295]"),
        ({**PRETRAIN, "config": {"batch_size": "many"}}, ["body", "config", "batch_size"], "int"),
        ({**PRETRAIN, "config": {"data": "/x"}}, ["body", "config", "data"], "dataset"),
        ({**PRETRAIN, "config": {**TINY, "batch_size": 36, "nproc": 9}}, ["body", "config", "nproc"], "at most 8"),
        # The evaluation set's path is checked against the data roots like the data's: never through config.
        ({**PRETRAIN, "config": {"eval_data": "/etc"}}, ["body", "config", "eval_data"], "dataset"),
        (
            {**PRETRAIN, "eval_dataset": {"name": "cifar10", "path": "/etc"}},
            ["body", "eval_dataset", "path"],
            "not a path the service reads data from",
        ),
        ({**PRETRAIN, "kind": "eval", "job": "0" * 32, "eval_dataset": {"name": "digits"}}, ["body"], "eval_dataset"),
        ({**PRETRAIN, "dataset": {"name": "cifar10"}}, ["body", "dataset", "path"], "needs a path"),
        (
            {**PRETRAIN, "dataset": {"name": "cifar10", "path": "/nowhere.tar.gz"}},
            ["body", "dataset", "path"],
            "not a path the service reads",
        ),
        ({**PRETRAIN, "dataset": {"name": "mnist"}}, ["body", "dataset", "name"], "known"),
        ({**PRETRAIN, "priority": 12}, ["body", "priority"], "less than or equal"),
        ({**PRETRAIN, "evaluate": ["svm"]}, ["body", "evaluate", 0], "knn"),
        ({**PRETRAIN, "config": {"knn": {"k": 0}}}, ["body", "config", "knn"], "k must be at least 1"),
        (
            {**PRETRAIN, "config": {"knn": {"temperature": 0}}},
            ["body", "config", "knn"],
            "temperature must be greater than 0, got 0.0",
        ),
        ({**PRETRAIN, "config": {"knn": 20}}, ["body", "config", "knn"], "object of protocol parameters"),
        ({**PRETRAIN, "config": {"linear": {"epoch": 5}}}, ["body", "config", "linear"], "valid: batch_size, epochs"),
        ({**PRETRAIN, "config": {"linear": {"lr": "fast"}}}, ["body", "config", "linear"], "lr must be of type float"),
        (
            {**PRETRAIN, "config": {"finetune": {"label_fraction": 10}}},
            ["body", "config", "finetune"],
            "label_fraction must be in (0, 1]",
        ),
        (
            {**PRETRAIN, "config": {"distill": {"student_init": "copy"}}},
            ["body", "config", "distill"],
            "student_init must be one of",
        ),
        ({"kind": "pretrain", "dataset": {"name": "synthetic"}}, ["body"], "needs method"),
        ({"kind": "eval"}, ["body"], "exactly one of checkpoint"),
        ({"kind": "eval", "checkpoint": 999999}, ["body", "checkpoint"], "no checkpoint"),
        ({"kind": "eval", "job": "0" * 32}, ["body", "job"], "no job"),
        ({**PRETRAIN, "colour": "red"}, ["body", "colour"], "Extra inputs"),
        ({**PRETRAIN, "resources": {"device": "tpu"}}, ["body", "resources", "device"], "'cpu' or 'gpu'"),
        ({**PRETRAIN, "resources": {"devices": 0}}, ["body", "resources", "devices"], "greater than or equal to 1"),
        ({**PRETRAIN, "resources": {"pool": "A100!"}}, ["body", "resources", "pool"], "lower-case letters"),
        ({**PRETRAIN, "resources": {"nodes": 9}}, ["body", "resources", "nodes"], "at most 8 (CSSL_MAX_NODES)"),
        (
            {**PRETRAIN, "config": {**TINY, "nproc": 2}, "resources": {"device": "cpu", "nodes": 3}},
            ["body", "resources", "nodes"],
            "batch_size 32 (the global batch) does not split evenly over 3 nodes of 2 processes; use a multiple of 6",
        ),
        ({**PRETRAIN, "resources": {"memory_gib": -1}}, ["body", "resources", "memory_gib"], "greater than 0"),
        (
            {**PRETRAIN, "config": {**PRETRAIN["config"], "device": "cuda"}, "resources": {"device": "cpu"}},
            ["body", "resources", "device"],
            "cpu conflicts with config.device 'cuda'",
        ),
        (
            {**PRETRAIN, "config": {**PRETRAIN["config"], "device": "cpu"}, "resources": {"device": "gpu"}},
            ["body", "resources", "device"],
            "gpu conflicts with config.device 'cpu'",
        ),
    ],
)
def test_validation_errors_name_the_field(client, alice, body, loc, words):
    problem = assert_problem(submit(client, alice, body), 422)
    assert [e["loc"] for e in problem["errors"]] == [loc], problem
    assert words in problem["errors"][0]["msg"], problem
    assert ".".join(map(str, loc)) in problem["detail"]


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_a_non_finite_number_is_refused_naming_the_field(client, alice, literal):
    # JSON has no NaN or infinity, but Python's parser (and so the API's) reads these literals.
    body = '{"kind": "pretrain", "method": "simclr", "dataset": {"name": "synthetic"}, "config": {"temperature": %s}}'
    response = client.post("/v1/jobs", content=body % literal, headers={**alice, "content-type": "application/json"})
    problem = assert_problem(response, 422)
    assert [e["loc"] for e in problem["errors"]] == [["body", "config", "temperature"]], problem
    assert problem["errors"][0]["msg"].startswith("temperature must be a finite number, got "), problem


def test_several_bad_fields_are_all_named(client, alice):
    body = {**PRETRAIN, "config": {"epochz": 1, "lrr": 2}, "dataset": {"name": "cifar10"}}
    problem = assert_problem(submit(client, alice, body), 422)
    assert sorted(e["loc"][-1] for e in problem["errors"]) == ["epochz", "lrr", "path"]


def test_eval_job_of_an_unfinished_job_is_refused(client, alice):
    job = submit(client, alice).json()
    problem = assert_problem(submit(client, alice, {"kind": "eval", "job": job["id"]}), 422)
    assert "succeeded pretrain job" in problem["detail"]


def test_malformed_json_is_a_problem(client, alice):
    response = client.post("/v1/jobs", content=b"{not json", headers={**alice, "content-type": "application/json"})
    assert_problem(response, 422)


def test_idempotency_key(client, alice):
    first = submit(client, alice, **{"Idempotency-Key": "k-123"})
    again = submit(client, alice, **{"Idempotency-Key": "k-123"})
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    other_body = {**PRETRAIN, "priority": 3}
    problem = assert_problem(submit(client, alice, other_body, **{"Idempotency-Key": "k-123"}), 422)
    assert first.json()["id"] in problem["detail"]
    # Keys belong to an owner: bob's "k-123" is a new job.
    assert submit(client, auth_of(client, "bob"), **{"Idempotency-Key": "k-123"}).json()["id"] != first.json()["id"]


def auth_of(client, owner):
    return client.app.state.test_tokens[owner]


@pytest.fixture(autouse=True)
def _tokens_on_app(client, tokens):
    client.app.state.test_tokens = {owner: auth(token) for owner, token in tokens.items()}


def test_owners_do_not_see_each_others_jobs(client, alice, bob):
    job = submit(client, alice).json()
    for path in (
        f"/v1/jobs/{job['id']}",
        f"/v1/jobs/{job['id']}/events",
        f"/v1/jobs/{job['id']}/metrics",
        f"/v1/jobs/{job['id']}/logs",
    ):
        assert_problem(client.get(path, headers=bob), 404)
    assert_problem(client.post(f"/v1/jobs/{job['id']}/cancel", headers=bob), 404)
    assert job["id"] not in {j["id"] for j in client.get("/v1/jobs?limit=200", headers=bob).json()["items"]}
    assert client.get(f"/v1/checkpoints?job={job['id']}", headers=bob).json() == []
    assert_problem(submit(client, bob, {"kind": "eval", "job": job["id"]}), 422)


def test_list_filters_and_pages(client, alice):
    ids = [submit(client, alice, {**PRETRAIN, "method": "byol"}).json()["id"] for _ in range(3)]
    page = client.get("/v1/jobs", params={"method": "byol", "limit": 2}, headers=alice).json()
    assert [j["id"] for j in page["items"]] == ids[::-1][:2]
    rest = client.get(page["next"], headers=alice).json()
    assert ids[0] in [j["id"] for j in rest["items"]]
    assert all(j["status"] == "queued" for j in client.get("/v1/jobs?status=queued", headers=alice).json()["items"])
    assert client.get("/v1/jobs?status=succeeded&kind=eval&method=byol", headers=alice).json() == {
        "items": [],
        "next": None,
    }
    assert_problem(client.get("/v1/jobs?status=done", headers=alice), 422)


def test_cancel_a_queued_job(client, alice):
    job = submit(client, alice).json()
    cancelled = client.post(f"/v1/jobs/{job['id']}/cancel", headers=alice)
    assert cancelled.status_code == 202
    assert cancelled.json()["status"] == "cancelled" and cancelled.json()["timings"]["finished_at"]
    # Cancelling again is harmless; the event stream replays the history and ends.
    assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=alice).json()["status"] == "cancelled"
    with client.stream("GET", f"/v1/jobs/{job['id']}/events", headers=alice) as stream:
        text = "".join(stream.iter_text())
    assert text.count("event: state") == 2 and '"status":"cancelled"' in text and text.rstrip().endswith("}")
    assert "event: end" in text


def test_a_claim_takes_a_job_once_and_never_a_cancelled_one(client, alice, settings):
    from store import jobs
    from store.db import session_scope

    queued, cancelled = submit(client, alice).json(), submit(client, alice).json()
    client.post(f"/v1/jobs/{cancelled['id']}/cancel", headers=alice)
    with session_scope(settings.database_url) as session:
        assert jobs.claim_job(session, queued["id"], "w-a") is not None
    with session_scope(settings.database_url) as session:
        assert jobs.claim_job(session, queued["id"], "w-b") is None  # the same message delivered twice
        assert jobs.claim_job(session, cancelled["id"], "w-b") is None


def test_methods_and_datasets(client, alice):
    methods = {m["name"]: m for m in client.get("/v1/methods", headers=alice).json()}
    assert {"simclr", "byol", "simsiam", "barlow_twins"} <= set(methods)
    simclr = methods["simclr"]
    assert simclr["paper"] and simclr["defaults"]["temperature"] == 0.5
    assert simclr["small_image_recipe"]["temperature"] == 0.2 and simclr["small_image_recipe"]["batch_size"] == 128
    assert "temperature" in simclr["config_schema"]["properties"]
    # Keys are described by their config fields' help (what `cssl pretrain --help` shows), a
    # method that only changes a default keeping its parent's.
    from cssl_core.config import MethodConfig

    properties = simclr["config_schema"]["properties"]
    assert properties["base_lr"]["description"] == MethodConfig.__dataclass_fields__["base_lr"].metadata["help"]
    assert all(p.get("description") for p in properties.values()), properties
    datasets = {d["name"]: d for d in client.get("/v1/datasets", headers=alice).json()}
    assert datasets["synthetic"]["needs_path"] is False and datasets["cifar10"]["needs_path"] is True
    # What recipe=auto picks on each data set, as a job on it resolves it.
    assert {name: d["recipe"] for name, d in datasets.items() if name in ("cifar10", "stl10")} == {
        "cifar10": "small_images",
        "stl10": "paper",
    }
    assert submit(client, alice).json()["config"]["recipe"] == datasets["synthetic"]["recipe"] == "small_images"


def test_config_schemas_carry_every_key_and_its_range_and_protocols_their_parameters(client, alice):
    """What the dashboard's submit form is generated from."""
    simclr = {m["name"]: m for m in client.get("/v1/methods", headers=alice).json()}["simclr"]
    properties = simclr["config_schema"]["properties"]
    assert set(properties) == set(simclr["defaults"]) - {"dataset", "data", "eval_dataset", "eval_data"}
    assert properties["epochs"]["minimum"] == 1 and properties["epochs"]["maximum"] == 100_000
    assert properties["temperature"]["exclusiveMinimum"] == 0 and properties["sgd_momentum"]["exclusiveMaximum"] == 1
    protocols = {p["name"]: p for p in client.get("/v1/protocols", headers=alice).json()}
    assert {"knn", "linear", "finetune", "distill"} <= set(protocols)
    assert protocols["knn"]["parameters"] == {"k": 200, "temperature": 0.1}
    assert protocols["knn"]["parameters_schema"]["properties"]["k"]["minimum"] == 1
    assert protocols["linear"]["parameters_schema"]["properties"]["label_fraction"]["maximum"] == 1
    assert protocols["attention"]["parameters"] == {"num_images": 6, "seed": 0}
    assert protocols["attention"]["parameters_schema"]["properties"]["num_images"]["maximum"] == 32


PROTOCOL_KEYS = {
    "name",
    "summary",
    "needs",
    "trains_encoder",
    "backbone",
    "accuracy",
    "extra",
    "parameters",
    "parameters_schema",
}


def test_protocols_state_what_each_needs_and_returns(client, alice):
    """The facts the dashboard lays out a protocol's result by, in the agreed shape."""
    protocols = {p["name"]: p for p in client.get("/v1/protocols", headers=alice).json()}
    assert set(protocols) == {"knn", "linear", "finetune", "distill", "embedding", "attention"}
    assert all(set(p) == PROTOCOL_KEYS for p in protocols.values())
    facts = {name: (p["needs"], p["trains_encoder"], p["backbone"], p["accuracy"]) for name, p in protocols.items()}
    assert facts == {
        "knn": ("features", False, "any", True),
        "linear": ("features", False, "any", True),
        "finetune": ("checkpoint", True, "any", True),
        "distill": ("checkpoint", True, "any", True),
        "embedding": ("features", False, "any", False),
        "attention": ("checkpoint", False, "vit", False),
    }
    assert set(protocols["embedding"]["extra"]) == {"reduction", "points", "classes", "random_init"}
    assert set(protocols["attention"]["extra"]) == {
        "images",
        "maps",
        "heads",
        "patch",
        "classes",
        "labels",
        "random_init",
    }
    assert set(protocols["knn"]["extra"]) == {"random_init"}
    assert "teacher_top1" in protocols["distill"]["extra"]
    texts = [text for p in protocols.values() for text in [p["summary"], *p["extra"].values()]]
    assert all(isinstance(text, str) and text for text in texts)


def test_a_protocol_registered_anywhere_is_listed_with_its_facts(client, alice, monkeypatch):
    from test_protocols import define_centroid_protocol

    from cssl_core.evaluation import protocol as registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    define_centroid_protocol()
    protocols = {p["name"]: p for p in client.get("/v1/protocols", headers=alice).json()}
    centroid = protocols["centroid"]
    assert set(centroid) == PROTOCOL_KEYS
    assert centroid["summary"].startswith("nearest class centroid")
    assert (centroid["needs"], centroid["trains_encoder"], centroid["backbone"], centroid["accuracy"]) == (
        "features",
        False,
        "any",
        True,
    )
    assert set(centroid["extra"]) == {"centroid_norm", "random_init"}
    assert centroid["parameters"] == {"metric": "cosine", "shrink": 0.0}
    assert centroid["parameters_schema"]["properties"]["shrink"]["maximum"] == 1
    monkeypatch.undo()
    assert "centroid" not in {p["name"] for p in client.get("/v1/protocols", headers=alice).json()}


def test_openapi_is_versioned_and_has_examples(client):
    spec = client.get("/openapi.json").json()
    assert {
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/cancel",
        "/v1/jobs/{job_id}/events",
        "/v1/jobs/{job_id}/metrics",
        "/v1/jobs/{job_id}/logs",
        "/v1/checkpoints",
        "/v1/checkpoints/{checkpoint_id}/download",
        "/v1/evaluations",
        "/v1/methods",
        "/v1/datasets",
        "/healthz",
        "/readyz",
    } <= set(spec["paths"])
    post = spec["paths"]["/v1/jobs"]["post"]
    assert post["requestBody"]["content"]["application/json"]["examples"]["pretrain"]["value"]["method"] == "simclr"
    assert "422" in post["responses"] and "HTTPBearer" in spec["components"]["securitySchemes"]


def test_unknown_route_is_a_problem(client):
    assert "/v1" in assert_problem(client.get("/jobs"), 404)["detail"]


def test_a_job_submitted_while_the_broker_is_down_is_published_later(settings, tokens):
    from api.main import create_app
    from dispatch.broker import make_celery
    from dispatch.publisher import Publisher
    from dispatch.sweeper import sweep
    from store import jobs
    from store.db import session_scope

    down = settings.with_(broker_url="redis://127.0.0.1:1/0", queue=settings.queue + "_down")
    with TestClient(create_app(down, sweep=False)) as client:
        assert client.get("/readyz").status_code == 503
        responses = [client.post("/v1/jobs", json=PRETRAIN, headers=auth(tokens["alice"])) for _ in range(2)]
    assert [r.status_code for r in responses] == [202, 202], responses[0].text
    # Only the first request waited for the broker; the second did not try.
    assert responses[1].elapsed.total_seconds() < 1
    job_ids = [r.json()["id"] for r in responses]
    with session_scope(settings.database_url) as session:
        for job_id in job_ids:
            job = jobs.get_job(session, job_id)
            assert job.status == "queued" and job.published_at is None
            job.created_at = job.created_at.replace(year=job.created_at.year - 1)  # past the grace period

    up = settings.with_(queue=settings.queue + "_down")
    publisher = Publisher(make_celery(up), up)
    counts = None
    for _ in range(50):  # None: a running API's sweeper held the lock for that instant
        counts = sweep(publisher)
        if counts is not None:
            break
        time.sleep(0.1)
    assert counts["published"] >= 2
    with session_scope(settings.database_url) as session:
        assert all(jobs.get_job(session, job_id).published_at is not None for job_id in job_ids)


def test_resources_are_stored_with_their_defaults_and_a_job_without_stays_as_it_was(client, alice):
    gpu = submit(client, alice, {**PRETRAIN, "resources": {"memory_gib": 40, "pool": "a100"}}).json()
    assert gpu["resources"] == {"device": "gpu", "devices": 1, "nodes": 1, "memory_gib": 40.0, "pool": "a100"}
    config = {**PRETRAIN.get("config", {}), "device": "cpu"}
    cpu = submit(client, alice, {**PRETRAIN, "config": config, "resources": {}}).json()
    assert cpu["resources"] == {"device": "cpu", "devices": 1, "nodes": 1, "memory_gib": None, "pool": None}
    plain = submit(client, alice, PRETRAIN).json()
    assert plain["resources"] is None and plain["waiting_reason"] is None  # not computed on submission
    # No worker of the test session takes pool a100 jobs.
    assert "in pool a100 and 40 GiB" in client.get(f"/v1/jobs/{gpu['id']}", headers=alice).json()["waiting_reason"]


def test_a_job_on_several_nodes_is_accepted_and_waits_for_as_many_workers(client, alice):
    from dispatch.routing import Offer, Resources, waiting_reason

    body = {**PRETRAIN, "config": {**TINY, "device": "cpu"}, "resources": {"nodes": 2, "pool": "nowhere"}}
    job = submit(client, alice, body).json()
    assert job["resources"] == {"device": "cpu", "devices": 1, "nodes": 2, "memory_gib": None, "pool": "nowhere"}
    seen = client.get(f"/v1/jobs/{job['id']}", headers=alice).json()["waiting_reason"]
    assert seen.startswith("waiting for 2 CPU workers in pool nowhere; "), seen
    # One worker that fits is not enough for a job on two nodes; two are.
    two = Resources("cpu", nodes=2)
    cpu, gpu = Offer(("cpu",)), Offer(("gpu",), ("0",))
    assert waiting_reason(two, [cpu, gpu]) == "waiting for 2 CPU workers; 1 of the 2 running workers fits"
    assert waiting_reason(two, [cpu, cpu, gpu]) is None
    assert waiting_reason(Resources("gpu", 2, nodes=3), []) == "waiting for 3 workers with 2 GPUs; no worker is running"

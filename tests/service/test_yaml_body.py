"""POST /v1/jobs with a YAML body: the same document as JSON gives the same job and the same
errors; bad YAML is a 422 that names the line; the body limit and the alias refusal hold."""

from __future__ import annotations

import time

import pytest
import yaml

from .support import TINY

PRETRAIN = {"kind": "pretrain", "method": "simclr", "dataset": {"name": "synthetic"}, "config": TINY, "evaluate": []}


def post_yaml(client, headers, text: str | bytes, media_type: str = "application/yaml", **extra):
    return client.post("/v1/jobs", content=text, headers={**headers, "Content-Type": media_type, **extra})


def assert_problem(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    return response.json()


def comparable(job: dict) -> dict:
    return {key: value for key, value in job.items() if key not in ("id", "timings", "links")}


@pytest.mark.parametrize(
    "media_type", ["application/yaml", "application/x-yaml", "text/yaml", "application/yaml; charset=utf-8"]
)
def test_a_yaml_body_makes_the_job_its_json_makes(client, alice, media_type):
    from_json = client.post("/v1/jobs", json=PRETRAIN, headers=alice)
    from_yaml = post_yaml(client, alice, yaml.safe_dump(PRETRAIN), media_type)
    assert from_json.status_code == from_yaml.status_code == 202, from_yaml.text
    assert from_yaml.headers["location"] == f"/v1/jobs/{from_yaml.json()['id']}"
    assert comparable(from_yaml.json()) == comparable(from_json.json())


def test_a_hand_written_yaml_job_with_comments(client, alice):
    text = """
        # SimCLR on generated images, with a kNN probe at the end
        kind: pretrain
        method: simclr
        dataset: {name: synthetic}
        config:
          backbone: small
          epochs: 1
          batch_size: 32
          subset: 128
          precision: fp32
          temperature: 0.3   # the paper's 0.5 is for batches of thousands
          knn: {k: 20}
        evaluate: [knn]
    """
    job = post_yaml(client, alice, "\n".join(line[8:] for line in text.splitlines())).json()
    assert job["config"]["temperature"] == 0.3 and job["evaluation_parameters"] == {"knn": {"k": 20}}


def test_the_same_document_in_yaml_replays_a_json_submission(client, alice):
    key = f"yaml-{time.time_ns()}"
    first = client.post("/v1/jobs", json=PRETRAIN, headers={**alice, "Idempotency-Key": key})
    again = post_yaml(client, alice, yaml.safe_dump(PRETRAIN), **{"Idempotency-Key": key})
    assert again.status_code == 202 and again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]


@pytest.mark.parametrize(
    "body",
    [
        {**PRETRAIN, "config": {**TINY, "temprature": 0.2}},
        {**PRETRAIN, "config": {**TINY, "epochs": 0}},
        {**PRETRAIN, "priority": 10, "colour": "red"},
        {**PRETRAIN, "method": None},
        [PRETRAIN],
    ],
)
def test_a_bad_field_is_the_same_422_as_in_json(client, alice, body):
    from_json = assert_problem(client.post("/v1/jobs", json=body, headers=alice), 422)
    from_yaml = assert_problem(post_yaml(client, alice, yaml.safe_dump(body)), 422)
    assert from_yaml == from_json


@pytest.mark.parametrize(
    "text, msg",
    [
        (
            "kind: pretrain\nmethod: simclr\n  dataset: {name: synthetic}\n",
            "YAML syntax error: line 3, column 10: mapping values are not allowed",
        ),
        ("kind: pretrain\nconfig: {epochs: 1\n", "YAML syntax error: line 3, column 1: "),
        (b"kind: \xff\n", "YAML syntax error: "),
        ("kind: pretrain\nconfig: !!python/object/apply:os.system [ls]\n", "YAML syntax error: line 2, column 9: "),
        ("kind: pretrain\nconfig: {seed: 2026-12-06}\n", "YAML value datetime.date(2026, 12, 6) at config.seed"),
        ("kind: pretrain\nconfig: {1: 2}\n", "YAML key 1 at config is not a string: quote it"),
    ],
)
def test_yaml_that_does_not_parse_is_a_422_naming_where(client, alice, text, msg):
    problem = assert_problem(post_yaml(client, alice, text), 422)
    assert problem["errors"][0]["loc"] == ["body"] and problem["errors"][0]["type"] == "yaml_invalid"
    assert problem["errors"][0]["msg"].startswith(msg), problem


@pytest.mark.parametrize("depth", [990, 5000])
def test_deep_nesting_is_a_422(client, alice, depth):
    text = "kind: pretrain\nconfig: {a: " + "[" * depth + "]" * depth + "}\n"
    assert_problem(post_yaml(client, alice, text), 422)


def test_aliases_are_refused_before_they_are_expanded(client, alice):
    # Nine levels of nine aliases: 387 million strings once expanded, a few hundred bytes here.
    levels = "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 10))
    text = "kind: pretrain\nconfig:\n  l0: &l0 [x]\n" + "".join(f"  {line}\n" for line in levels.splitlines())
    started = time.monotonic()
    problem = assert_problem(post_yaml(client, alice, text), 422)
    assert time.monotonic() - started < 5
    assert "aliases" in problem["errors"][0]["msg"]


def test_a_huge_yaml_body_is_refused_by_the_body_limit(client, alice):
    big = yaml.safe_dump({**PRETRAIN, "config": {**TINY, "note": "x" * (2 * 1024 * 1024)}})
    response = post_yaml(client, alice, big)
    assert response.status_code == 413 and "limited to" in response.json()["detail"]


def test_an_empty_yaml_body_is_the_same_422_as_an_empty_json_body(client, alice):
    from_json = assert_problem(
        client.post("/v1/jobs", content=b"", headers={**alice, "Content-Type": "application/json"}), 422
    )
    assert assert_problem(post_yaml(client, alice, b""), 422) == from_json


def test_other_routes_ignore_the_yaml_content_type(client, alice):
    job = client.post("/v1/jobs", json=PRETRAIN, headers=alice).json()
    # Cancelling takes no body, so it reads none, however the request labels one.
    response = client.post(
        f"/v1/jobs/{job['id']}/cancel", content=b"{{", headers={**alice, "Content-Type": "text/yaml"}
    )
    assert response.status_code == 202 and response.json()["status"] == "cancelled"


def test_the_openapi_description_offers_yaml(client):
    content = client.get("/openapi.json").json()["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]
    assert content["application/yaml"]["schema"] == content["application/json"]["schema"]

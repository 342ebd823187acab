"""Inputs a careless or hostile client sends: each is a clear 4xx and leaves nothing stored."""

from __future__ import annotations

import pytest

from .support import auth

JOB = b'{"kind":"pretrain","method":"simclr","dataset":{"name":"synthetic"},"config":%s}'


@pytest.fixture()
def alice(tokens):  # JSON bodies sent as bytes here, so the content type is set by hand
    return {**auth(tokens["alice"]), "Content-Type": "application/json"}


def job_count(client, headers) -> int:
    return len(client.get("/v1/jobs", headers=headers, params={"limit": 200}).json()["items"])


def test_a_huge_body_is_refused_before_it_is_read(client, alice):
    before = job_count(client, alice)
    big = JOB % (b'{"note": "%s"}' % (b"x" * (2 * 1024 * 1024)))
    response = client.post("/v1/jobs", content=big, headers=alice)
    assert response.status_code == 413 and response.headers["content-type"] == "application/problem+json"
    assert "limited to" in response.json()["detail"]
    # A chunked body announces no length: it is counted as it arrives.
    chunks = (b"x" * 65536 for _ in range(40))
    response = client.post("/v1/jobs", content=(c for c in [JOB[:60], *chunks]), headers=alice)
    assert response.status_code == 413
    assert job_count(client, alice) == before


def test_a_deeply_nested_config_is_a_422(client, alice):
    nested = b'{"a":' * 5000 + b"1" + b"}" * 5000
    response = client.post("/v1/jobs", content=JOB % nested, headers=alice)
    assert response.status_code == 422, response.text


@pytest.mark.parametrize(
    "config, field",
    [
        (b'{"epochs": 1000000000000000000000000000000}', "epochs must be in [1, 100000]"),
        (b'{"batch_size": 100000000}', "batch_size must be in [2, 65536]"),
        (b'{"temperature": -1}', "temperature must be greater than 0"),
        (b'{"temperature": NaN}', "temperature must be a finite number"),
        (b'{"base_lr": 1e999}', "base_lr"),
        (b'{"t\xc3\xa9mperature": 0.5}', "did you mean temperature"),
    ],
)
def test_numbers_out_of_range_name_the_key(client, alice, config, field):
    response = client.post("/v1/jobs", content=JOB % config, headers=alice)
    assert response.status_code == 422 and field in response.json()["detail"], response.text


def test_a_protocol_named_twice_is_a_422(client, alice):
    body = JOB % b"{}"
    body = body[:-1] + b',"evaluate":' + b'["knn"]'.replace(b'"knn"', b'"knn",' * 9999 + b'"knn"') + b"}"
    response = client.post("/v1/jobs", content=body, headers=alice)
    assert response.status_code == 422 and "evaluate" in response.json()["detail"]


def test_unicode_names_are_kept_as_sent(client, alice):
    key = "ключ-🔑-clé"
    headers = [(k.encode(), v.encode()) for k, v in alice.items()] + [(b"Idempotency-Key", key.encode())]
    first = client.post("/v1/jobs", content=JOB % b'{"epochs": 1}', headers=headers)
    again = client.post("/v1/jobs", content=JOB % b'{"epochs": 1}', headers=headers)
    assert first.status_code == again.status_code == 202 and again.json()["id"] == first.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    unknown = client.post("/v1/jobs", content=JOB.replace(b"simclr", "simclr\u202e".encode()) % b"{}", headers=alice)
    assert unknown.status_code == 422 and "did you mean simclr" in unknown.json()["detail"]

"""Job submissions per owner: at most CSSL_SUBMIT_BURST in any window of BURST / RATE minutes,
counted in Redis (in memory when embedded); past it a 429 with Retry-After, other owners left
alone, the window moving on, and no limit at rate 0."""

from __future__ import annotations

import time
import uuid

import pytest
from fastapi.testclient import TestClient

from .support import TINY, auth

JOB = {"kind": "pretrain", "method": "simclr", "dataset": {"name": "synthetic"}, "config": TINY, "evaluate": []}


@pytest.fixture()
def limited(service_env, settings):
    """An API whose settings come from the environment, with a low limit: 2 submissions in any
    10 s, on a queue (and so counters) of its own."""
    from api.main import create_app
    from store.settings import Settings

    queue = f"{settings.queue}_idle_{uuid.uuid4().hex[:8]}"
    env = {**service_env, "CSSL_QUEUE": queue, "CSSL_SUBMIT_RATE": "12", "CSSL_SUBMIT_BURST": "2"}
    with TestClient(create_app(Settings.from_env(env), sweep=False)) as client:
        assert client.app.state.limits.submissions.amount == 2
        assert client.app.state.limits.submissions.get_expiry() == 10
        yield client


def test_submissions_past_the_burst_are_429_with_retry_after(limited, tokens):
    alice, bob = auth(tokens["alice"]), auth(tokens["bob"])
    accepted = [limited.post("/v1/jobs", json=JOB, headers=alice) for _ in range(2)]
    assert [r.status_code for r in accepted] == [202, 202]
    refused = limited.post("/v1/jobs", json=JOB, headers=alice)
    assert refused.status_code == 429, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    problem = refused.json()
    assert problem["limit"] == "CSSL_SUBMIT_RATE" and "2 jobs or uploads at once" in problem["detail"]
    retry_after = int(refused.headers["retry-after"])
    assert 1 <= retry_after <= 10 and problem["retry_after"] == retry_after
    # Other owners have budgets of their own; reading is not limited.
    assert limited.post("/v1/jobs", json=JOB, headers=bob).status_code == 202
    assert limited.get("/v1/jobs", headers=alice).status_code == 200
    time.sleep(retry_after + 0.2)
    again = limited.post("/v1/jobs", json=JOB, headers=alice)
    assert again.status_code == 202, again.text
    for job in [*accepted, again]:
        limited.post(f"/v1/jobs/{job.json()['id']}/cancel", headers=alice)


def test_every_attempt_counts_and_a_token_is_checked_first(limited, tokens):
    alice = auth(tokens["alice"])
    assert [limited.post("/v1/jobs", json={}, headers=alice).status_code for _ in range(3)] == [422, 422, 429]
    assert limited.post("/v1/jobs", json=JOB).status_code == 401


def test_rate_0_is_no_limit(settings, tokens):
    from api.main import create_app

    with TestClient(create_app(settings.with_(submit_rate=0, queue=settings.queue + "_idle"), sweep=False)) as client:
        assert [client.post("/v1/jobs", json={}, headers=auth(tokens["bob"])).status_code for _ in range(30)] == [
            422
        ] * 30

"""Job submissions per owner: a token bucket that answers 429 with Retry-After once an owner's
burst is spent, leaves other owners alone, refills at the set rate, and is off at rate 0."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from .support import TINY, auth

JOB = {"kind": "pretrain", "method": "simclr", "dataset": {"name": "synthetic"}, "config": TINY, "evaluate": []}


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_bucket_holds_a_burst_and_refills_at_the_rate():
    from api.ratelimit import TokenBucket

    clock = Clock()
    bucket = TokenBucket(per_minute=30, burst=3, clock=clock)  # one every 2 s
    assert [bucket.take("alice") for _ in range(3)] == [0, 0, 0]
    assert bucket.take("alice") == pytest.approx(2.0)
    assert bucket.take("bob") == 0
    clock.now += 1.5
    assert bucket.take("alice") == pytest.approx(0.5)
    clock.now += 0.5
    assert bucket.take("alice") == 0
    clock.now += 3600  # refills to the burst, not beyond
    assert [bucket.take("alice") for _ in range(4)][-1] == pytest.approx(2.0)


def test_buckets_that_have_refilled_are_forgotten():
    from api.ratelimit import TokenBucket

    clock = Clock()
    bucket = TokenBucket(per_minute=60, burst=2, clock=clock, size=3)
    for owner in ("a", "b", "c"):
        bucket.take(owner)
    clock.now += 10
    bucket.take("d")
    assert set(bucket._buckets) == {"d"}


@pytest.fixture()
def limited(service_env, settings):
    """An API whose settings come from the environment, with a low limit: a burst of 2, then
    one submission every 10 s, on a clock the test moves."""
    from api.main import create_app
    from store.settings import Settings

    env = {**service_env, "CSSL_QUEUE": settings.queue + "_idle", "CSSL_SUBMIT_RATE": "6", "CSSL_SUBMIT_BURST": "2"}
    with TestClient(create_app(Settings.from_env(env), sweep=False)) as client:
        bucket = client.app.state.submit_bucket
        assert (bucket.per_second, bucket.burst) == (pytest.approx(0.1), 2)
        bucket.clock = client.clock = Clock()
        yield client


def test_submissions_past_the_burst_are_429_with_retry_after(limited, tokens):
    alice, bob = auth(tokens["alice"]), auth(tokens["bob"])
    accepted = [limited.post("/v1/jobs", json=JOB, headers=alice) for _ in range(2)]
    assert [r.status_code for r in accepted] == [202, 202]
    refused = limited.post("/v1/jobs", json=JOB, headers=alice)
    assert refused.status_code == 429, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.headers["retry-after"] == "10"
    problem = refused.json()
    assert problem["retry_after"] == 10 and "retry in 10 s" in problem["detail"] and "2 jobs at once" in problem["detail"]
    # Other owners have buckets of their own; reading is not limited.
    assert limited.post("/v1/jobs", json=JOB, headers=bob).status_code == 202
    assert limited.get("/v1/jobs", headers=alice).status_code == 200
    limited.clock.now += 7.5
    assert limited.post("/v1/jobs", json=JOB, headers=alice).headers["retry-after"] == "3"
    limited.clock.now += 2.5
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
        assert [client.post("/v1/jobs", json={}, headers=auth(tokens["bob"])).status_code for _ in range(30)] == [422] * 30

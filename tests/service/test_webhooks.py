"""Webhooks: a real API process (its webhook sender included, with retries a fraction of a
second apart) and a real worker tell a local receiver of a job's state changes, signed as
Standard Webhooks say; the signatures are checked here with an implementation of the test's own.
Who may see and name which endpoint is checked in-process."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from .support import TINY, start_api, wait_for

RETRIES = "0.3,0.3,0.3"  # four attempts in all
JOB = {"kind": "pretrain", "method": "simclr", "dataset": {"name": "synthetic"}, "config": TINY, "evaluate": []}


class Receiver:
    """An HTTP server on a free port that records every POST ``(path, headers, body)`` and
    answers 500 to the first ``fail[path]`` requests to a path, 200 after."""

    def __init__(self):
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.fail: dict[str, int] = {}
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver.lock:
                    receiver.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                    failing = receiver.fail.get(self.path, 0) > 0
                    if failing:
                        receiver.fail[self.path] -= 1
                self.send_response(500 if failing else 200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def to(self, path: str) -> list[tuple[dict[str, str], bytes]]:
        with self.lock:
            return [(headers, body) for p, headers, body in self.requests if p == path]

    def types(self, path: str) -> list[str]:
        return [json.loads(body)["type"] for _, body in self.to(path)]


def verify(secret: str, headers: dict[str, str], body: bytes, tolerance: float = 300) -> bool:
    """Standard Webhooks verification, written from the spec apart from the service's code:
    HMAC-SHA256 keyed by the base64 after whsec_, over id.timestamp.body; any v1 signature in
    the space-separated list may match; the timestamp must be recent."""
    key = base64.b64decode(secret.split("_", 1)[1])
    content = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, content, hashlib.sha256).digest())
    if abs(time.time() - int(headers["webhook-timestamp"])) > tolerance:
        return False
    return any(
        version == "v1" and hmac.compare_digest(signature.encode(), expected)
        for version, _, signature in (part.partition(",") for part in headers["webhook-signature"].split())
    )


@pytest.fixture(scope="module")
def receiver():
    receiver = Receiver()
    yield receiver
    receiver.server.shutdown()


@pytest.fixture(scope="module")
def hooks_api(service_env, tmp_path_factory):
    env = {**service_env, "CSSL_WEBHOOK_RETRY_SECONDS": RETRIES, "CSSL_WEBHOOK_INTERVAL": "0.2"}
    process, base = start_api(env, tmp_path_factory.mktemp("hooks-api") / "api.log")
    yield base
    process.stop()


def register(base: str, headers: dict, receiver: Receiver, path: str, **fields) -> dict:
    response = httpx.post(f"{base}/v1/webhooks", json={"url": receiver.url + path, **fields}, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


def deliveries(base: str, headers: dict, webhook: dict) -> list[dict]:
    response = httpx.get(f"{base}{webhook['links']['deliveries']}", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def test_the_signature_is_the_specs():
    from dispatch.webhooks import sign, signed_headers
    from store.webhooks import new_secret

    # The test vector of the Standard Webhooks reference libraries.
    vector = sign(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}'
    )
    assert vector == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

    secret, body = new_secret(), b'{"type":"ping"}'
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) >= 24
    headers = signed_headers(secret, "msg_1", body)
    assert verify(secret, headers, body)
    assert not verify(new_secret(), headers, body)  # another secret
    assert not verify(secret, headers, body + b" ")  # another body
    assert not verify(secret, {**headers, "webhook-id": "msg_2"}, body)  # another id
    assert not verify(secret, signed_headers(secret, "msg_1", body, timestamp=int(time.time()) - 3600), body)


def test_a_job_tells_its_endpoints_and_a_failing_one_is_retried(hooks_api, worker, receiver, alice):
    every = register(hooks_api, alice, receiver, "/every", events=["running", "succeeded", "failed"])
    named = register(hooks_api, alice, receiver, "/named", jobs="named")
    unnamed = register(hooks_api, alice, receiver, "/unnamed", jobs="named")
    assert [w["id"] for w in httpx.get(f"{hooks_api}/v1/webhooks", headers=alice).json()][-3:] == [
        every["id"],
        named["id"],
        unnamed["id"],
    ]
    assert all("secret" not in w for w in httpx.get(f"{hooks_api}/v1/webhooks", headers=alice).json())
    receiver.fail["/named"] = 2

    submitted = httpx.post(
        f"{hooks_api}/v1/jobs",
        json={**JOB, "name": "hooked", "tags": {"t": "1"}, "webhooks": [named["id"]]},
        headers=alice,
    )
    assert submitted.status_code == 202, submitted.text
    job = submitted.json()
    assert job["webhooks"] == [named["id"]]

    wait_for(lambda: "job.succeeded" in receiver.types("/every"), 240, message="job.succeeded at /every")
    wait_for(lambda: len(receiver.to("/named")) >= 3, 30, message="three attempts at /named")
    time.sleep(1)  # anything more that would come

    # Every endpoint of the owner that hears of all jobs, with its own events.
    assert receiver.types("/every") == ["job.running", "job.succeeded"]
    for headers, body in receiver.to("/every"):
        assert verify(every["secret"], headers, body), headers
        assert not verify(named["secret"], headers, body)  # the negative control: a wrong secret
    payload = json.loads(receiver.to("/every")[-1][1])
    assert payload["data"]["id"] == job["id"] and payload["data"]["status"] == "succeeded"
    assert payload["data"]["name"] == "hooked" and payload["data"]["tags"] == {"t": "1"}
    assert payload["data"]["method"] == "simclr" and payload["data"]["dataset"] == "synthetic"
    assert payload["data"]["links"]["self"] == f"/v1/jobs/{job['id']}" and payload["timestamp"]

    # The endpoint the job named: the same message three times, the last answered 200.
    attempts = receiver.to("/named")
    assert [json.loads(body)["type"] for _, body in attempts] == ["job.succeeded"] * 3
    assert len({headers["webhook-id"] for headers, _ in attempts}) == 1
    assert len({body for _, body in attempts}) == 1
    assert all(verify(named["secret"], headers, body) for headers, body in attempts)
    recorded = deliveries(hooks_api, alice, named)
    assert [(d["attempt"], d["status_code"]) for d in recorded] == [(3, 200), (2, 500), (1, 500)]
    assert {d["message_id"] for d in recorded} == {attempts[0][0]["webhook-id"]}
    assert all(d["message_status"] == "delivered" and d["job_id"] == job["id"] for d in recorded)
    assert recorded[1]["error"].startswith("not a 2xx: 500")

    # One registered for named jobs that this job did not name hears nothing.
    assert receiver.to("/unnamed") == [] and deliveries(hooks_api, alice, unnamed) == []
    assert [d["status_code"] for d in deliveries(hooks_api, alice, every)] == [200, 200]


def test_a_receiver_that_keeps_failing_is_given_up_on(hooks_api, receiver, alice):
    webhook = register(hooks_api, alice, receiver, "/down")
    receiver.fail["/down"] = 100
    ping = httpx.post(f"{hooks_api}{webhook['links']['test']}", headers=alice)
    assert ping.status_code == 202 and ping.json()["type"] == "ping", ping.text
    wait_for(lambda: any(d["message_status"] == "failed" for d in deliveries(hooks_api, alice, webhook)), 30)
    recorded = deliveries(hooks_api, alice, webhook)
    assert [d["attempt"] for d in recorded] == [4, 3, 2, 1]
    assert {d["message_id"] for d in recorded} == {ping.json()["id"]}
    time.sleep(1)
    assert len(receiver.to("/down")) == 4


def test_a_deleted_endpoint_gets_nothing_more(hooks_api, receiver, alice):
    webhook = register(hooks_api, alice, receiver, "/gone")
    receiver.fail["/gone"] = 100
    assert httpx.post(f"{hooks_api}{webhook['links']['test']}", headers=alice).status_code == 202
    wait_for(lambda: receiver.to("/gone"), 10, message="the first attempt")
    assert httpx.delete(f"{hooks_api}{webhook['links']['self']}", headers=alice).status_code == 204
    sent = len(receiver.to("/gone"))
    time.sleep(1.5)  # past every retry that was due
    assert len(receiver.to("/gone")) == sent
    assert httpx.post(f"{hooks_api}{webhook['links']['test']}", headers=alice).status_code == 404
    assert webhook["id"] not in [w["id"] for w in httpx.get(f"{hooks_api}/v1/webhooks", headers=alice).json()]


def test_another_owner_neither_sees_nor_names_alices_endpoints(client, alice, bob_headers):
    webhook = client.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/a"}, headers=alice).json()
    assert webhook["id"] not in [w["id"] for w in client.get("/v1/webhooks", headers=bob_headers).json()]
    for method, path in (
        ("GET", webhook["links"]["self"]),
        ("GET", webhook["links"]["deliveries"]),
        ("POST", webhook["links"]["test"]),
        ("DELETE", webhook["links"]["self"]),
    ):
        response = client.request(method, path, headers=bob_headers)
        assert response.status_code == 404 and "list yours" in response.json()["detail"], (method, path)
    refused = client.post("/v1/jobs", json={**JOB, "webhooks": [webhook["id"]]}, headers=bob_headers)
    assert refused.status_code == 422, refused.text
    assert refused.json()["errors"][0]["loc"] == ["body", "webhooks", 0]
    assert client.get(webhook["links"]["self"], headers=alice).status_code == 200


@pytest.mark.parametrize(
    "url",
    ["ftp://example.org/x", "http://user:pass@example.org/x", "http://example.org:99999/", "https:///x", "file:///etc"],
)
def test_a_url_must_be_plain_http(client, alice, url):
    response = client.post("/v1/webhooks", json={"url": url}, headers=alice)
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["loc"][:2] == ["body", "url"]


def test_private_addresses_can_be_refused(settings, alice):
    from fastapi.testclient import TestClient

    from api.main import create_app
    from dispatch.webhooks import address_problem

    with TestClient(create_app(settings.with_(webhook_allow_private=False), sweep=False)) as closed:
        for url in ("http://127.0.0.1:8080/x", "http://10.1.2.3/x", "http://[::1]/x", "http://localhost/x"):
            response = closed.post("/v1/webhooks", json={"url": url}, headers=alice)
            assert response.status_code == 422 and "CSSL_WEBHOOK_ALLOW_PRIVATE" in response.text, url
    # A name is looked up when a message is sent.
    assert "127.0.0.1" in address_problem("http://localhost:9/x")

"""Who may see what: every route of the app refuses a request without a token and tells
another owner nothing of alice's objects (it answers as for an object that does not exist); a
revoked token is refused; no token or password reaches a log; a download never leaves the
artifact store.

The routes come from the app itself, so a new route is covered as soon as it exists: a route
whose path names a kind of object this file has none of, or that takes a body it has no
example of, fails here until one is added.
"""

from __future__ import annotations

import io
import re
import tarfile
import time
import uuid
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient

from .support import TINY, auth, read_events

# Routes that answer without a token, listed by hand: the dashboard's pages too (each page asks
# for a token and sends it with its API requests; its files are a mount, not routes).
PUBLIC = {
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),  # for Prometheus: counts, and running jobs' progress by job id, no owners
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"),
    ("GET", "/ui"),
    ("GET", "/ui/"),
    ("GET", "/ui/jobs/{job_id}"),
    ("GET", "/ui/compare"),
    ("GET", "/ui/leaderboard"),
    ("GET", "/ui/submit"),
}
# What a route that takes a body is sent: a function of the ids of the objects to name.
BODIES = {
    ("POST", "/v1/jobs"): lambda ids: {
        "json": {"kind": "eval", "checkpoint": ids["checkpoint_id"], "evaluate": ["knn"]}
    },
    ("POST", "/v1/jobs/{job_id}/cancel"): lambda ids: {},
    ("PATCH", "/v1/jobs/{job_id}"): lambda ids: {"json": {"name": "taken", "tags": {"owner": "bob"}}},
    ("POST", "/v1/datasets/uploads"): lambda ids: {
        "content": archive(),
        "headers": {"content-type": "application/gzip"},
    },
    # Port 9 (discard): nothing listens, so bob's endpoint costs a refused connection.
    ("POST", "/v1/webhooks"): lambda ids: {"json": {"url": "http://127.0.0.1:9/bob"}},
    ("POST", "/v1/webhooks/{webhook_id}/test"): lambda ids: {},
}
# Query parameters that name one of alice's objects, and values for the other required ones.
NAMING_QUERY = {"job": "job_id", "checkpoint": "checkpoint_id"}
OTHER_QUERY = {"name": "bobs-data"}
# What `cssl token create` makes: the prefix and 32 random bytes, URL-safe base64.
ANY_TOKEN = re.compile(r"cssl_[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])")


def archive() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        member = tarfile.TarInfo("train/a/0.txt")
        member.size = 2
        tar.addfile(member, io.BytesIO(b"hi"))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def app(settings):
    from api.main import create_app

    # A queue no worker reads: jobs submitted in-process stay queued.
    return create_app(settings.with_(queue=settings.queue + "_idle"), sweep=False)


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app) as client:
        yield client


@pytest.fixture(scope="module")
def routes(app) -> list[tuple[str, str]]:
    from api.problems import app_routes

    return sorted(
        {(method, route.path) for route in app_routes(app) for method in route.methods or () if method != "HEAD"}
    )


@pytest.fixture(scope="module")
def spec(app) -> dict:
    return app.openapi()


@pytest.fixture(scope="module")
def alices(server, worker, tokens, routes) -> dict[str, str | int]:
    """alice's objects, made by the real API and worker: a trained job, its checkpoint and
    evaluation, and an upload where the service takes them."""
    alice = auth(tokens["alice"])
    body = {
        "kind": "pretrain",
        "method": "simclr",
        "dataset": {"name": "synthetic"},
        "config": TINY,
        "evaluate": ["knn"],
    }
    job = httpx.post(f"{server}/v1/jobs", json=body, headers=alice).json()
    events = read_events(server, f"/v1/jobs/{job['id']}/events", alice, timeout=240)
    assert events[-2]["data"].get("status") == "succeeded", events[-3:]
    [checkpoint] = httpx.get(f"{server}/v1/checkpoints", params={"job": job["id"]}, headers=alice).json()
    [evaluation] = httpx.get(f"{server}/v1/evaluations", params={"job": job["id"]}, headers=alice).json()
    assert evaluation["checkpoint_id"] == checkpoint["id"]
    ids = {"job_id": job["id"], "checkpoint_id": checkpoint["id"], "evaluation_id": evaluation["id"]}
    webhook = httpx.post(f"{server}/v1/webhooks", json={"url": "http://127.0.0.1:9/alice"}, headers=alice)
    assert webhook.status_code == 201, webhook.text
    ids["webhook_id"] = webhook.json()["id"]
    if ("POST", "/v1/datasets/uploads") in routes:
        upload = httpx.post(
            f"{server}/v1/datasets/uploads",
            params={"name": "alices-data"},
            content=archive(),
            headers={**alice, "content-type": "application/gzip"},
        )
        assert upload.status_code == 202, upload.text
        ids["upload_id"] = upload.json()["id"]
    return ids


def nobodys(ids: dict) -> dict:
    """Ids of the same kinds that no one has; ids that are equal (a checkpoint and an evaluation
    may both be number 1) stay equal, so the answers read the same once the ids are taken out."""
    fresh: dict = {}
    for n, value in enumerate(ids.values()):
        fresh.setdefault(value, 2_000_000_000 + n if isinstance(value, int) else uuid.uuid4().hex)
    return {name: fresh[value] for name, value in ids.items()}


def request_for(method: str, path: str, spec: dict, ids: dict) -> dict:
    """The path filled with ``ids``, query parameters naming them, and the body this file sends."""
    names = re.findall(r"{(\w+)}", path)
    missing = [name for name in names if name not in ids]
    assert not missing, f"{method} {path}: give alice an object for {missing} in this file's `alices` fixture"
    if method in ("POST", "PUT", "PATCH"):
        assert (method, path) in BODIES, f"{method} {path}: add the body it takes to BODIES in this file"
    params = {}
    for parameter in spec["paths"].get(path, {}).get(method.lower(), {}).get("parameters", []):
        if parameter["in"] != "query":
            continue
        if parameter["name"] in NAMING_QUERY:
            params[parameter["name"]] = ids[NAMING_QUERY[parameter["name"]]]
        elif parameter.get("required"):
            assert parameter["name"] in OTHER_QUERY, (
                f"{method} {path}: give its query parameter {parameter['name']} a value"
            )
            params[parameter["name"]] = OTHER_QUERY[parameter["name"]]
    url = path.format(**{name: ids[name] for name in names})
    return {"method": method, "url": url, "params": params, **BODIES.get((method, path), lambda ids: {})(ids)}


def without_ids(text: str, ids: dict) -> str:
    for name, value in ids.items():
        text = re.sub(rf"\b{re.escape(str(value))}\b", f"<{name}>", text)
    return re.sub(r'"(created_at|at)":"[^"]*"', '"<time>"', text)


def test_the_public_routes_answer_without_a_token(routes, client):
    assert set(routes) >= PUBLIC, PUBLIC - set(routes)
    for method, path in PUBLIC - {("GET", "/docs/oauth2-redirect")}:
        assert client.request(method, path).status_code == 200, path


def test_every_other_route_needs_a_token(routes, spec, client):
    placeholders = {
        "job_id": uuid.uuid4().hex,
        "checkpoint_id": 1,
        "evaluation_id": 1,
        "upload_id": uuid.uuid4().hex,
        "webhook_id": uuid.uuid4().hex,
    }
    for method, path in sorted(set(routes) - PUBLIC):
        request = request_for(method, path, spec, placeholders)
        for headers in ({}, {"Authorization": "Basic YWxpY2U6c2VjcmV0"}, auth("cssl_not-a-token")):
            response = client.request(**{**request, "headers": {**request.get("headers", {}), **headers}})
            assert response.status_code == 401, (method, path, headers, response.text)
            assert response.headers["content-type"] == "application/problem+json"
            assert response.headers["www-authenticate"] == "Bearer"


def test_another_owner_learns_nothing_of_alices_objects(server, alices, tokens, routes, spec):
    bob = auth(tokens["bob"])
    unknown = nobodys(alices)
    for method, path in sorted(set(routes) - PUBLIC):
        names_object = (
            "{" in path
            or path == "/v1/jobs"
            and method == "POST"
            or any(
                p["name"] in NAMING_QUERY
                for p in spec["paths"].get(path, {}).get(method.lower(), {}).get("parameters", [])
            )
        )
        answers = []
        for ids in (alices, unknown):
            request = request_for(method, path, spec, ids)
            response = httpx.request(
                **{**request, "url": server + request["url"], "headers": {**request.get("headers", {}), **bob}}
            )
            assert response.status_code < 500, (method, path, response.text)
            answers.append((response.status_code, without_ids(response.text, ids)))
        if names_object:
            # As if the object did not exist: the same status and the same words.
            assert answers[0] == answers[1], (method, path, answers)
        else:
            assert not any(str(alices[name]) in answers[0][1] for name in ("job_id", "upload_id") if name in alices)
        if "{" in path:
            assert answers[0][0] in (403, 404), (method, path, answers[0])
    # Nothing of alice's changed: bob's cancel and delete found nothing.
    alice = auth(tokens["alice"])
    assert httpx.get(f"{server}/v1/jobs/{alices['job_id']}", headers=alice).json()["status"] == "succeeded"
    if "upload_id" in alices:
        assert httpx.get(f"{server}/v1/datasets/uploads/{alices['upload_id']}", headers=alice).status_code == 200
    assert httpx.get(f"{server}/v1/webhooks/{alices['webhook_id']}", headers=alice).status_code == 200


def test_an_eval_job_cannot_name_another_owners_job_or_checkpoint(server, alices, tokens):
    bob = auth(tokens["bob"])
    for body in ({"kind": "eval", "checkpoint": alices["checkpoint_id"]}, {"kind": "eval", "job": alices["job_id"]}):
        response = httpx.post(f"{server}/v1/jobs", json=body, headers=bob)
        assert response.status_code == 422 and "list yours" in response.json()["detail"], response.text


def test_a_revoked_token_is_refused(settings, app):
    from api.deps import TokenCache
    from api.main import create_app
    from cli.main import main as cssl
    from store import tokens
    from store.db import session_scope

    with session_scope(settings.database_url) as session:
        token = tokens.create_token(session, "carol")
    app.state.token_cache = TokenCache(ttl=0.5)
    with TestClient(app) as running:
        assert running.get("/v1/jobs", headers=auth(token)).status_code == 200
        assert cssl(["token", "revoke", token[: tokens.PREFIX_LENGTH]]) == 0
        # A process that has not seen the token refuses it at once; one that has, once its cache forgets it.
        with TestClient(create_app(settings, sweep=False)) as fresh:
            assert fresh.get("/v1/jobs", headers=auth(token)).status_code == 401
        time.sleep(0.6)
        response = running.get("/v1/jobs", headers=auth(token))
        assert response.status_code == 401 and "revoked" in response.json()["detail"]
    app.state.token_cache = TokenCache()


def test_downloads_never_leave_the_artifact_store(client, settings, tokens, tmp_path):
    from store import records
    from store.db import session_scope

    alice = auth(tokens["alice"])
    body = {"kind": "pretrain", "method": "simclr", "dataset": {"name": "synthetic"}, "config": TINY, "evaluate": []}
    job = client.post("/v1/jobs", json=body, headers=alice).json()
    secret = tmp_path / "secret.pt"
    secret.write_text("root:x:0:0:not for download")
    folder = settings.artifacts.folder / "jobs" / job["id"]
    folder.mkdir(parents=True)
    (folder / "escape.pt").symlink_to(secret)
    (folder / "job.log").symlink_to(secret)
    outside = [
        "../" * 12 + "etc/passwd",
        str(secret),
        f"jobs/{job['id']}/escape.pt",
        f"jobs/{job['id']}/" + "../" * 30 + str(secret.relative_to("/")),
    ]
    with session_scope(settings.database_url) as session:
        ids = [
            records.record_checkpoint(session, job["id"], path, epoch=1, step=n, final=False, size_bytes=28).id
            for n, path in enumerate(outside)
        ]
    for checkpoint_id in ids:
        for params in ({}, {"format": "torchvision"}):
            response = client.get(f"/v1/checkpoints/{checkpoint_id}/download", params=params, headers=alice)
            assert response.status_code == 410 and "root:" not in response.text, response.text
    logs = client.get(f"/v1/jobs/{job['id']}/logs", headers=alice)
    assert logs.status_code == 200 and "root:" not in logs.text
    client.post(f"/v1/jobs/{job['id']}/cancel", headers=alice)


def test_no_token_or_password_reaches_a_log(alices, settings, tokens, tmp_path_factory):
    """Runs after the tests above, over the logs of every API server and worker the fixtures
    started in this session so far."""
    logs = sorted(tmp_path_factory.getbasetemp().glob("*/*.log"))
    names = {log.name for log in logs}
    assert {"api.log", "worker.log"} <= names, names
    secrets = list(tokens.values())
    for url in (settings.database_url, settings.broker_url):
        if password := urlsplit(url).password:
            secrets.append(password)
    for log in logs:
        text = log.read_text(errors="replace")
        for secret in secrets:
            assert secret not in text, f"{log} has a secret ({secret[:8]}...)"
        # Any token at all, those of other tests' owners too.
        assert not ANY_TOKEN.search(text), f"{log} has a token ({ANY_TOKEN.search(text).group()[:8]}...)"

"""Every registered method runs as a service job: HTTP in, a real worker process, a kNN result out."""

from __future__ import annotations

import httpx
from tiny import tiny_heads

from cssl_core.methods import method_names

from .support import TINY, auth, wait_for


def test_every_method_trains_and_evaluates_as_a_job(server, worker, tokens):
    headers = auth(tokens["alice"])
    known = {m["name"]: m for m in httpx.get(f"{server}/v1/methods", headers=headers, timeout=30).json()}
    assert sorted(known) == method_names()
    jobs = {}
    for method in method_names():
        response = httpx.post(
            f"{server}/v1/jobs",
            headers=headers,
            json={
                "kind": "pretrain",
                "method": method,
                "dataset": {"name": "synthetic"},
                "config": {**TINY, **tiny_heads(method)},
                "evaluate": ["knn"],
            },
            timeout=30,
        )
        assert response.status_code == 202, (method, response.text)
        jobs[method] = response.json()["id"]

    def finished():
        states = {m: httpx.get(f"{server}/v1/jobs/{j}", headers=headers, timeout=30).json() for m, j in jobs.items()}
        return states if all(s["status"] in ("succeeded", "failed", "cancelled") for s in states.values()) else None

    states = wait_for(finished, timeout=900, interval=1.0, message="every method's job to finish")
    failed = {m: s.get("error") for m, s in states.items() if s["status"] != "succeeded"}
    assert not failed, failed
    for method, job in jobs.items():
        evaluations = httpx.get(f"{server}/v1/evaluations", headers=headers, params={"job": job}, timeout=30).json()
        assert [e["protocol"] for e in evaluations] == ["knn"], method
        assert 0 <= evaluations[0]["top1"] <= 100
        assert states[method]["result"]["steps"] == 4

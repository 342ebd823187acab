"""Job names and tags, and GET /v1/jobs as a search: filters, sorts and cursor pages that do
not shift while jobs arrive (offset pages repeat and skip jobs then)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from .support import TINY

PRETRAIN = {"kind": "pretrain", "method": "simclr", "dataset": {"name": "synthetic"}, "config": TINY, "evaluate": []}


@pytest.fixture()
def batch() -> str:
    """A tag value no other test uses, so a search sees only this test's jobs."""
    return uuid.uuid4().hex[:12]


def submit(client, headers, **fields) -> dict:
    response = client.post("/v1/jobs", json={**PRETRAIN, **fields}, headers=headers)
    assert response.status_code == 202, response.text
    return response.json()


def search(client, headers, **params) -> list[dict]:
    """Every page of a search, in order, following `next`."""
    response = client.get("/v1/jobs", params=params, headers=headers)
    items = []
    while True:
        assert response.status_code == 200, response.text
        page = response.json()
        items += page["items"]
        if not page["next"]:
            return items
        response = client.get(page["next"], headers=headers)


def ids(jobs) -> list[str]:
    return [job["id"] for job in jobs]


def test_a_job_keeps_its_name_and_tags_and_can_be_renamed_and_retagged(client, alice, batch):
    job = submit(client, alice, name="r18 baseline", tags={"batch": batch, "sweep": "lr", "lr": "0.3"})
    assert job["name"] == "r18 baseline" and job["tags"] == {"batch": batch, "sweep": "lr", "lr": "0.3"}
    assert client.get(f"/v1/jobs/{job['id']}", headers=alice).json()["tags"] == job["tags"]

    patched = client.patch(
        f"/v1/jobs/{job['id']}", json={"tags": {"sweep": None, "best": "yes", "lr": "0.5"}}, headers=alice
    )
    assert patched.status_code == 200, patched.text
    # Merged: sweep removed, lr changed, best added, batch kept; the name untouched.
    assert patched.json()["tags"] == {"batch": batch, "best": "yes", "lr": "0.5"}
    assert patched.json()["name"] == "r18 baseline"
    cleared = client.patch(f"/v1/jobs/{job['id']}", json={"name": None}, headers=alice).json()
    assert cleared["name"] is None and cleared["tags"] == {"batch": batch, "best": "yes", "lr": "0.5"}
    assert ids(search(client, alice, tag=[f"batch:{batch}", "best:yes"])) == [job["id"]]
    assert search(client, alice, tag=[f"batch:{batch}", "sweep"]) == []
    assert search(client, alice, tag=f"batch:{batch}", name="baseline") == []


def test_names_and_tags_are_checked(client, alice, batch, bob):
    bad = [
        {"name": ""},
        {"name": "two\nlines"},
        {"tags": {"white space": "x"}},
        {"tags": {"k": "v" * 201}},
        {"tags": {f"k{i}": "v" for i in range(33)}},
    ]
    for fields in bad:
        response = client.post("/v1/jobs", json={**PRETRAIN, **fields}, headers=alice)
        assert response.status_code == 422, (fields, response.text)
        assert ("name" if "name" in fields else "tags") in response.text
    job = submit(client, alice, tags={f"k{i}": "v" for i in range(32)})
    too_many = client.patch(f"/v1/jobs/{job['id']}", json={"tags": {"one_more": "v"}}, headers=alice)
    assert too_many.status_code == 422 and "at most 32 tags" in too_many.text
    # Another owner's job is as missing as a job that does not exist.
    assert client.patch(f"/v1/jobs/{job['id']}", json={"name": "mine"}, headers=bob).status_code == 404
    assert client.get(f"/v1/jobs/{job['id']}", headers=alice).json()["name"] is None


@pytest.fixture()
def bob(tokens):
    return {"Authorization": f"Bearer {tokens['bob']}"}


def test_filters_combine(client, alice, bob, batch):
    a = submit(client, alice, name="SimCLR 100% lr=0.3", tags={"batch": batch, "sweep": "lr"})
    b = submit(client, alice, name="simclr_temp", tags={"batch": batch, "sweep": "temperature"})
    c = submit(client, alice, method="byol", tags={"batch": batch})
    d = submit(client, alice, tags={"batch": batch, "sweep": "lr"}, dataset={"name": "digits"})
    submit(client, bob, name="simclr", tags={"batch": batch, "sweep": "lr"})  # never in alice's answers

    assert ids(search(client, alice, tag=f"batch:{batch}")) == [d["id"], c["id"], b["id"], a["id"]]
    assert ids(search(client, alice, tag=[f"batch:{batch}", "sweep:lr"])) == [d["id"], a["id"]]
    assert ids(search(client, alice, tag=[f"batch:{batch}", "sweep"])) == [d["id"], b["id"], a["id"]]
    assert ids(search(client, alice, tag=f"batch:{batch}", method="byol")) == [c["id"]]
    assert ids(search(client, alice, tag=f"batch:{batch}", dataset="digits")) == [d["id"]]
    # A part of the name, in any case; % and _ are plain characters, not patterns.
    assert ids(search(client, alice, tag=f"batch:{batch}", name="SIMCLR")) == [b["id"], a["id"]]
    assert ids(search(client, alice, tag=f"batch:{batch}", name="100%")) == [a["id"]]
    assert ids(search(client, alice, tag=f"batch:{batch}", name="r_0")) == []
    assert ids(search(client, alice, tag=f"batch:{batch}", status="running")) == []

    created = datetime.fromisoformat(c["timings"]["created_at"])
    after = search(client, alice, tag=f"batch:{batch}", created_after=created.isoformat())
    assert ids(after) == [d["id"], c["id"]]
    before = search(client, alice, tag=f"batch:{batch}", created_before=created.isoformat())
    assert ids(before) == [b["id"], a["id"]]
    naive_future = (datetime.now(UTC) + timedelta(hours=1)).replace(tzinfo=None).isoformat()
    assert search(client, alice, tag=f"batch:{batch}", created_after=naive_future) == []

    for params in ({"tag": "no spaces:x"}, {"tag": ":value"}, {"sort": "priority"}, {"created_after": "yesterday"}):
        response = client.get("/v1/jobs", params=params, headers=alice)
        assert response.status_code == 422, (params, response.text)


def test_cursor_pages_do_not_shift_while_jobs_arrive(client, alice, batch):
    first = [submit(client, alice, tags={"batch": batch}) for _ in range(5)]
    newest_first = ids(reversed(first))
    page = client.get("/v1/jobs", params={"tag": f"batch:{batch}", "limit": 2}, headers=alice).json()
    seen = ids(page["items"])
    # Jobs submitted between pages go to the front; an offset would now repeat seen[-1].
    later = [submit(client, alice, tags={"batch": batch}) for _ in range(3)]
    while page["next"]:
        page = client.get(page["next"], headers=alice).json()
        seen += ids(page["items"])
    assert seen == newest_first
    assert ids(search(client, alice, tag=f"batch:{batch}", limit=3))[:3] == ids(reversed(later))
    oldest_first = search(client, alice, tag=f"batch:{batch}", sort="created_at", limit=2)
    assert ids(oldest_first) == ids(first) + ids(later)


def test_sorting_by_name_pages_through_unnamed_jobs_too(client, alice, batch):
    named = {name: submit(client, alice, name=name, tags={"batch": batch})["id"] for name in ("b", "a", "c", "a")}
    unnamed = {submit(client, alice, tags={"batch": batch})["id"] for _ in range(2)}
    ascending = search(client, alice, tag=f"batch:{batch}", sort="name", limit=1)
    assert [job["name"] for job in ascending] == [None, None, "a", "a", "b", "c"]
    assert set(ids(ascending[:2])) == unnamed and len(set(ids(ascending))) == 6
    descending = search(client, alice, tag=f"batch:{batch}", sort="-name", limit=4)
    assert ids(descending) == ids(reversed(ascending))
    assert named["c"] == descending[0]["id"]

    cursor = client.get("/v1/jobs", params={"tag": f"batch:{batch}", "sort": "name", "limit": 1}, headers=alice)
    next_link = cursor.json()["next"]
    token = next_link.split("cursor=")[1].split("&")[0]
    # A cursor belongs to its sort order; garbage is refused with what to do instead.
    for params in ({"cursor": token, "sort": "-created_at"}, {"cursor": "not-a-cursor"}, {"cursor": "e30"}):
        response = client.get("/v1/jobs", params=params, headers=alice)
        assert response.status_code == 422 and "next" in response.text, (params, response.text)

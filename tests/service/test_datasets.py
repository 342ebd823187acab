"""Data roots and uploads against the real Postgres and Redis: a job reads only inside
CSSL_DATA_ROOTS and every refused path gets the same 422; the worker checks the path again;
uploads are streamed with a size limit, a per-owner quota and a free-space floor, unpacked in
the background member by member (no absolute paths, '..', links or devices; every inflated byte
counted; members, folders and depth capped), belong to their uploader, cannot be named by a job
before they are ready, and cannot be deleted under a queued job; what a crash leaves is swept."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import os
import random
import shutil
import tarfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from .support import DATA_ROOT, auth, read_events

FEW_STEPS = {"backbone": "small", "epochs": 1, "batch_size": 4, "precision": "fp32"}


def job(dataset: dict) -> dict:
    return {"kind": "pretrain", "method": "simclr", "dataset": dataset, "config": FEW_STEPS, "evaluate": []}


@pytest.fixture(scope="module")
def client(settings):
    from api.main import create_app

    # A queue no worker reads: jobs submitted here stay queued.
    with TestClient(create_app(settings.with_(queue=settings.queue + "_idle"), sweep=False)) as client:
        yield client


def new_owner(settings) -> dict[str, str]:
    """A token of an owner of this test's own, with nothing uploaded or submitted yet."""
    return named_owner(settings)[1]


def named_owner(settings) -> tuple[str, dict[str, str]]:
    from store import tokens
    from store.db import session_scope

    owner = f"owner-{uuid.uuid4().hex[:8]}"
    with session_scope(settings.database_url) as session:
        return owner, auth(tokens.create_token(session, owner))


@pytest.fixture()
def alice(settings):
    return new_owner(settings)


@pytest.fixture()
def bob(settings):
    return new_owner(settings)


def png(seed: int) -> bytes:
    out = io.BytesIO()
    Image.frombytes("RGB", (16, 16), random.Random(seed).randbytes(16 * 16 * 3)).save(out, format="PNG")
    return out.getvalue()


def image_files(per_class: int = 6) -> dict[str, bytes]:
    """An image folder, train/<class>/<image> and test/<class>/<image>, two classes."""
    files = {}
    for c, name in enumerate(("cat", "dog")):
        for i in range(per_class):
            files[f"train/{name}/{i}.png"] = png(40 * c + i)
        for i in range(2):
            files[f"test/{name}/{i}.png"] = png(40 * c + i + 100)
    return files


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def member(name: str, data: bytes | None = None, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tuple:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, linkname, len(data or b"")
    return info, data


def tar_gz(members: list[tuple]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def image_archive(files: dict[str, bytes] | None = None) -> bytes:
    return tar_gz([member(name, data) for name, data in (files or image_files()).items()])


def upload(client, headers, body, name: str = "pets"):
    return client.post(
        "/v1/datasets/uploads",
        params={"name": name},
        content=body,
        headers={**headers, "Content-Type": "application/gzip"},
    )


def settled(client, headers, response, timeout: float = 60) -> dict:
    """The upload a POST answered 202 for, once it is no longer unpacking."""
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "unpacking" and response.json()["num_files"] == 0
    deadline = time.monotonic() + timeout
    while (dataset := client.get(response.headers["location"], headers=headers).json())["status"] == "unpacking":
        assert time.monotonic() < deadline, dataset
        time.sleep(0.05)
    return dataset


def failed(client, headers, response) -> str:
    """The error of an upload that was received but could not be unpacked."""
    dataset = settled(client, headers, response)
    assert dataset["status"] == "failed" and dataset["error"], dataset
    return dataset["error"]


def assert_problem(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    return response.json()


def everything_under(folder: Path) -> set[str]:
    """Every file and folder under ``folder``, but the staging folder itself (made once, kept)."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*")} - {".incoming"} if folder.exists() else set()


def rows(settings, **where) -> list[str]:
    """Ids of the upload rows that match, of any owner."""
    from sqlalchemy import select

    from store.db import session_scope
    from store.models import Dataset

    with session_scope(settings.database_url) as session:
        return list(session.scalars(select(Dataset.id).filter_by(**where)))


def test_paths_outside_the_data_roots_are_all_refused_with_the_same_words(client, alice, tmp_path):
    outside = write_tree(tmp_path / "outside", image_files())  # a good data set, only in the wrong place
    link_out = DATA_ROOT / f"link-out-{uuid.uuid4().hex[:6]}"
    DATA_ROOT.mkdir(parents=True, exist_ok=True)
    link_out.symlink_to(outside, target_is_directory=True)
    refused = [
        "/etc",
        "../../../../etc",
        str(outside),
        str(tmp_path / "missing"),
        link_out.name,
        "not-there",
        "uploads",
        ".",
    ]
    details = set()
    for path in refused:
        problem = assert_problem(
            client.post("/v1/jobs", json=job({"name": "imagefolder", "path": path}), headers=alice), 422
        )
        assert [e["loc"] for e in problem["errors"]] == [["body", "dataset", "path"]], (path, problem)
        details.add(problem["detail"])
    # Whether the path exists, is a folder of the server's or a link out of a root: one message,
    # naming no path of the server's.
    assert len(details) == 1, details
    [detail] = details
    for secret in ("/etc", str(tmp_path), str(DATA_ROOT), "exist", "passwd"):
        assert secret not in detail


def test_a_path_inside_a_root_is_accepted(client, alice):
    folder = f"mine-{uuid.uuid4().hex[:6]}"
    write_tree(DATA_ROOT / folder, image_files())
    (DATA_ROOT / f"{folder}-alias").symlink_to(DATA_ROOT / folder, target_is_directory=True)
    for path in (folder, str(DATA_ROOT / folder), f"{folder}-alias"):
        response = client.post("/v1/jobs", json=job({"name": "imagefolder", "path": path}), headers=alice)
        assert response.status_code == 202, response.text
        assert response.json()["dataset"] == {"name": "imagefolder", "path": path, "upload": None}
        assert response.json()["config"]["data"] == path
    # Inside a root, but not laid out as the data set needs: that may be said.
    (DATA_ROOT / f"{folder}-empty").mkdir()
    problem = assert_problem(
        client.post("/v1/jobs", json=job({"name": "imagefolder", "path": f"{folder}-empty"}), headers=alice), 422
    )
    assert "not laid out as imagefolder needs" in problem["detail"]


def test_upload_an_image_folder_and_name_it_in_a_job(client, alice, settings):
    files = image_files()
    body = image_archive(files)
    response = upload(client, alice, body, name="pets")
    assert response.headers["location"] == f"/v1/datasets/uploads/{response.json()['id']}"
    dataset = settled(client, alice, response)
    assert dataset["name"] == "pets" and dataset["status"] == "ready" and dataset["error"] is None
    assert dataset["sha256"] == hashlib.sha256(body).hexdigest() and dataset["size_bytes"] == len(body)
    assert dataset["num_files"] == len(files) == 16
    # The tar as inflated: each file's bytes, and headers and padding around them.
    assert sum(map(len, files.values())) < dataset["unpacked_bytes"] < 20 * 1024 + 2 * sum(map(len, files.values()))
    unpacked = settings.uploads_folder / dataset["id"]
    assert {str(p.relative_to(unpacked)) for p in unpacked.rglob("*") if p.is_file()} == set(files)
    assert (unpacked / "train/dog/3.png").read_bytes() == files["train/dog/3.png"]

    assert client.get(f"/v1/datasets/uploads/{dataset['id']}", headers=alice).json() == dataset
    assert [d["id"] for d in client.get("/v1/datasets/uploads", headers=alice).json()] == [dataset["id"]]
    # The built-in catalogue is unchanged: names, not uploads.
    assert "imagefolder" in {d["name"] for d in client.get("/v1/datasets", headers=alice).json()}

    submitted = client.post("/v1/jobs", json=job({"name": "imagefolder", "upload": dataset["id"]}), headers=alice)
    assert submitted.status_code == 202, submitted.text
    assert submitted.json()["dataset"] == {
        "name": "imagefolder",
        "path": f"uploads/{dataset['id']}",
        "upload": dataset["id"],
    }
    both = job({"name": "imagefolder", "upload": dataset["id"], "path": "mine"})
    assert "not both" in assert_problem(client.post("/v1/jobs", json=both, headers=alice), 422)["detail"]
    # The uploads folder is reached by id only, even by the uploader.
    by_path = client.post(
        "/v1/jobs", json=job({"name": "imagefolder", "path": f"uploads/{dataset['id']}"}), headers=alice
    )
    assert assert_problem(by_path, 422)["errors"][0]["loc"] == ["body", "dataset", "path"]


def corrupt(archive: bytes) -> bytes:
    # A byte flipped in the compressed stream near its end: the members before it read well.
    damaged = bytearray(archive)
    damaged[-30] ^= 0xFF
    return bytes(damaged)


GOOD = [member(name, data) for name, data in image_files(per_class=3).items()]
ABSOLUTE = f"/tmp/cssl-absolute-{uuid.uuid4().hex[:6]}.png"
# Each with what its error says.
BAD_ARCHIVES = {
    "dot-dot": (tar_gz([*GOOD, member("train/../../escaped.png", png(1))]), "'..'"),
    "absolute": (tar_gz([*GOOD, member(ABSOLUTE, png(1))]), "absolute path"),
    "symlink": (tar_gz([*GOOD, member("train/cat/link.png", kind=tarfile.SYMTYPE, linkname="0.png")]), "is a link"),
    "hard-link": (
        tar_gz([*GOOD, member("train/cat/hard.png", kind=tarfile.LNKTYPE, linkname="train/cat/0.png")]),
        "is a link",
    ),
    "device": (tar_gz([*GOOD, member("train/cat/null", kind=tarfile.CHRTYPE)]), "device"),
    "corrupt-gzip": (corrupt(tar_gz(GOOD)), "not a readable .tar.gz"),
    "cut-short": (tar_gz(GOOD)[: len(tar_gz(GOOD)) * 2 // 3], "not a readable .tar.gz"),
    "empty": (tar_gz([member("train/", kind=tarfile.DIRTYPE)]), "holds no files"),
}


@pytest.mark.parametrize("case", BAD_ARCHIVES)
def test_a_bad_archive_fails_and_leaves_nothing_but_its_row(client, alice, settings, case):
    body, says = BAD_ARCHIVES[case]
    before = everything_under(settings.uploads_folder)
    name = f"bad-{case}-{uuid.uuid4().hex[:6]}"
    response = upload(client, alice, body, name=name)
    assert says in failed(client, alice, response)
    assert everything_under(settings.uploads_folder) == before
    assert rows(settings, name=name, status="failed") == [response.json()["id"]]
    assert not Path(ABSOLUTE).exists() and not (settings.uploads_folder / "escaped.png").exists()
    [listed] = client.get("/v1/datasets/uploads", headers=alice).json()
    assert listed["status"] == "failed" and says in listed["error"]
    # Deleting it is allowed, and takes the row.
    assert client.delete(response.headers["location"], headers=alice).status_code == 204
    assert rows(settings, name=name) == []


def test_a_body_that_is_not_gzip_is_refused_at_once(client, alice, settings):
    before = everything_under(settings.uploads_folder)
    for body in (b"train/cat/0.png\n" * 100, b"", b"\x1f"):
        problem = assert_problem(upload(client, alice, body, name="not-gzip"), 422)
        assert problem["errors"][0]["loc"] == ["body"] and "not a readable .tar.gz" in problem["detail"]
    assert everything_under(settings.uploads_folder) == before
    assert rows(settings, name="not-gzip") == []


def test_archives_over_the_limits_get_413_and_leave_nothing(settings, alice):
    from api.main import create_app

    small = settings.with_(max_upload_bytes=4096, queue=settings.queue + "_idle")
    app = create_app(small, sweep=False)
    before = everything_under(settings.uploads_folder)
    noise = random.Random(0).randbytes(8192)  # gzip cannot shrink it

    with TestClient(app) as client:
        # Content-Length says so: refused before a byte is read.
        declared = upload(client, alice, tar_gz([member("train/a/x.bin", noise)]), name="too-big-declared")
        assert "4,096 bytes" in assert_problem(declared, 413)["detail"]
        # Small packed, large unpacked: 64 KiB of zeros is more than 4 x 4 KiB.
        zeros = tar_gz([member("train/a/zeros.bin", bytes(65536))])
        assert len(zeros) < 4096
        assert "unpacked" in failed(client, alice, upload(client, alice, zeros, name="too-big-unpacked"))

    async def streamed() -> httpx.Response:
        # No Content-Length: the limit is counted as the chunks come, after some were written.
        body = tar_gz([member("train/a/x.bin", noise)])

        async def chunks():
            for start in range(0, len(body), 1024):
                yield body[start : start + 1024]

        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as http:
            return await http.post(
                "/v1/datasets/uploads", params={"name": "too-big-streamed"}, content=chunks(), headers=alice
            )

    assert "4,096 bytes" in assert_problem(asyncio.run(streamed()), 413)["detail"]
    assert everything_under(settings.uploads_folder) == before
    assert [rows(settings, name=n) for n in ("too-big-declared", "too-big-streamed")] == [[], []]
    assert len(rows(settings, name="too-big-unpacked", status="failed")) == 1


def test_another_owner_can_neither_see_delete_nor_use_an_upload(client, alice, bob, settings):
    dataset = settled(client, alice, upload(client, alice, image_archive()))
    path = f"/v1/datasets/uploads/{dataset['id']}"
    assert_problem(client.get(path, headers=bob), 404)
    assert_problem(client.delete(path, headers=bob), 404)
    assert client.get("/v1/datasets/uploads", headers=bob).json() == []
    problem = assert_problem(
        client.post("/v1/jobs", json=job({"name": "imagefolder", "upload": dataset["id"]}), headers=bob), 422
    )
    assert problem["errors"][0]["loc"] == ["body", "dataset", "upload"] and "no upload" in problem["detail"]
    # Nor by the path it lies at: refused in the same words as any other.
    by_path = client.post(
        "/v1/jobs", json=job({"name": "imagefolder", "path": f"uploads/{dataset['id']}"}), headers=bob
    )
    elsewhere = client.post("/v1/jobs", json=job({"name": "imagefolder", "path": "/etc"}), headers=bob)
    assert assert_problem(by_path, 422)["detail"] == assert_problem(elsewhere, 422)["detail"]
    # Still alice's, whole.
    assert client.get(path, headers=alice).json()["status"] == "ready"
    assert (settings.uploads_folder / dataset["id"] / "train").is_dir()


def test_an_upload_a_queued_job_uses_cannot_be_deleted(client, alice, settings):
    dataset = settled(client, alice, upload(client, alice, image_archive()))
    path, folder = f"/v1/datasets/uploads/{dataset['id']}", settings.uploads_folder / dataset["id"]
    queued = client.post("/v1/jobs", json=job({"name": "imagefolder", "upload": dataset["id"]}), headers=alice).json()
    assert queued["status"] == "queued"

    problem = assert_problem(client.delete(path, headers=alice), 409)
    assert queued["id"] in problem["detail"]
    assert folder.is_dir() and client.get(path, headers=alice).json()["status"] == "ready"

    client.post(f"/v1/jobs/{queued['id']}/cancel", headers=alice)
    deleted = client.delete(path, headers=alice)
    assert deleted.status_code == 204, deleted.text
    assert not folder.exists() and rows(settings, id=dataset["id"]) == []
    assert_problem(client.get(path, headers=alice), 404)
    again = client.post("/v1/jobs", json=job({"name": "imagefolder", "upload": dataset["id"]}), headers=alice)
    assert assert_problem(again, 422)["errors"][0]["loc"] == ["body", "dataset", "upload"]


def test_the_worker_checks_the_path_again_when_the_job_runs(client, alice, settings, tmp_path):
    from worker import runner

    inside = write_tree(DATA_ROOT / f"real-{uuid.uuid4().hex[:6]}", image_files())
    outside = write_tree(tmp_path / "outside", image_files())
    link = DATA_ROOT / f"swap-{uuid.uuid4().hex[:6]}"
    link.symlink_to(inside, target_is_directory=True)
    queued = client.post("/v1/jobs", json=job({"name": "imagefolder", "path": link.name}), headers=alice).json()
    assert queued["status"] == "queued"

    link.unlink()
    link.symlink_to(outside, target_is_directory=True)  # swapped after the API checked it
    assert runner.run_job(settings, queued["id"], "w-check") == "failed"
    failed = client.get(f"/v1/jobs/{queued['id']}", headers=alice).json()
    assert failed["status"] == "failed" and "no longer readable" in failed["error"]
    assert failed["result"] is None and failed["progress"] is None  # it never trained
    log = client.get(f"/v1/jobs/{queued['id']}/logs", headers=alice).text
    for text in (failed["error"], log):
        assert str(outside) not in text and str(tmp_path) not in text and str(DATA_ROOT) not in text


@pytest.mark.parametrize(
    "stored",
    ["uploads/{id}/.", "uploads/{id}/train/..", "./uploads/{id}", "uploads/../uploads/{id}", "uploads/.incoming"],
)
def test_the_worker_reaches_an_upload_by_its_id_alone(client, alice, settings, stored):
    """A job's stored data path is ``uploads/<id>`` exactly, or it reaches no upload: the worker
    does not follow any other path into the uploads folder (a row written by something else)."""
    from sqlalchemy import update

    from store.db import session_scope
    from store.models import Job
    from worker import runner

    dataset = settled(client, alice, upload(client, alice, image_archive()))
    queued = client.post("/v1/jobs", json=job({"name": "imagefolder", "upload": dataset["id"]}), headers=alice).json()
    assert queued["dataset"]["path"] == f"uploads/{dataset['id']}"
    with session_scope(settings.database_url) as session:
        session.execute(update(Job).where(Job.id == queued["id"]).values(dataset_path=stored.format(id=dataset["id"])))
    assert runner.run_job(settings, queued["id"], "w-check") == "failed"
    failed = client.get(f"/v1/jobs/{queued['id']}", headers=alice).json()
    assert "no longer readable" in failed["error"] and failed["result"] is None


def test_a_data_set_over_the_decoded_bytes_limit_is_streamed_or_refused_before_decoding(client, alice, settings):
    from worker import runner

    dataset = settled(client, alice, upload(client, alice, image_archive()))
    # 16 images at imagefolder's 64 px take 196,608 bytes decoded: by default (data_mode auto)
    # such a set is streamed from disk rather than decoded.
    over = settings.with_(max_decoded_bytes=196_607)
    streamed = client.post("/v1/jobs", json=job({"name": "imagefolder", "upload": dataset["id"]}), headers=alice).json()
    assert runner.run_job(over, streamed["id"], "w-check") == "succeeded"
    log = client.get(f"/v1/jobs/{streamed['id']}/logs", headers=alice).text
    assert "196,608 bytes decoded, over 196,607 (CSSL_MAX_DECODED_BYTES): streaming" in log, log[-2000:]
    # data_mode memory asks for it decoded: refused before anything is decoded.
    body = job({"name": "imagefolder", "upload": dataset["id"]})
    body["config"] = {**body["config"], "data_mode": "memory"}
    queued = client.post("/v1/jobs", json=body, headers=alice).json()
    assert runner.run_job(over, queued["id"], "w-check") == "failed"
    failed = client.get(f"/v1/jobs/{queued['id']}", headers=alice).json()
    assert failed["result"] is None and failed["progress"] is None
    assert failed["error"].endswith(
        ": 16 images of 64x64 take 196,608 bytes decoded in memory, more than the 196,607 "
        "bytes allowed (CSSL_MAX_DECODED_BYTES); use fewer images or a smaller image size, "
        "or raise CSSL_MAX_DECODED_BYTES"
    ), failed["error"]


def test_a_link_inside_a_data_set_to_a_file_outside_the_roots_is_not_read(server, worker, alice, tmp_path):
    secret = tmp_path / "secret.png"
    secret.write_bytes(png(999))
    tree = write_tree(DATA_ROOT / f"linked-{uuid.uuid4().hex[:6]}", image_files())
    (tree / "test" / "cat" / "9.png").symlink_to(secret)  # the test split: what attention maps show back
    submitted = httpx.post(f"{server}/v1/jobs", json=job({"name": "imagefolder", "path": tree.name}), headers=alice)
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    read_events(server, f"/v1/jobs/{job_id}/events", alice, timeout=240)
    done = httpx.get(f"{server}/v1/jobs/{job_id}", headers=alice).json()
    assert done["status"] == "failed" and done["result"] is None
    assert done["error"] == (
        f"{tree}/test/cat/9.png is a link; links inside an image folder are not followed: "
        "put the files themselves in the folder"
    )


def test_an_uploaded_data_set_trains_on_the_worker(server, worker, alice):
    body = image_archive()
    with httpx.Client(base_url=server, timeout=60) as http:
        response = http.post("/v1/datasets/uploads", params={"name": "pets"}, content=body, headers=alice)
        upload_id = settled(http, alice, response)["id"]
    submitted = httpx.post(
        f"{server}/v1/jobs",
        json={
            **job({"name": "imagefolder", "upload": upload_id}),
            "evaluate": ["knn"],
            "config": {**FEW_STEPS, "knn": {"k": 3}},
        },
        headers=alice,
    )
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    read_events(server, f"/v1/jobs/{job_id}/events", alice, timeout=240)
    done = httpx.get(f"{server}/v1/jobs/{job_id}", headers=alice).json()
    assert done["status"] == "succeeded", done["error"]
    assert done["result"]["steps"] == 3  # 12 training images, batches of 4
    [knn] = httpx.get(f"{server}/v1/evaluations", params={"job": job_id}, headers=alice).json()
    assert knn["dataset"] == "imagefolder" and knn["num_train"] == 12 and knn["num_test"] == 4
    # The job is over: its upload can go.
    assert httpx.delete(f"{server}/v1/datasets/uploads/{upload_id}", headers=alice).status_code == 204


def test_unlabelled_images_pretrain_and_evaluate_on_a_named_labelled_set(server, worker, alice):
    folder = f"photos-{uuid.uuid4().hex[:6]}"
    write_tree(DATA_ROOT / folder, {f"{day}/{i}.png": png(i) for day in ("mon", "tue/evening") for i in range(6)})
    labelled = f"pets-{uuid.uuid4().hex[:6]}"
    write_tree(DATA_ROOT / labelled, image_files())
    body = {
        **job({"name": "imagefolder", "path": folder}),
        "evaluate": ["knn"],
        "config": {**FEW_STEPS, "knn": {"k": 3}},
    }
    refused = httpx.post(f"{server}/v1/jobs", json=body, headers=alice)
    assert refused.status_code == 422 and "eval_dataset" in refused.text and "no labels" in refused.text
    # Nor may the evaluation set be unlabelled.
    wrong = httpx.post(
        f"{server}/v1/jobs", json={**body, "eval_dataset": {"name": "imagefolder", "path": folder}}, headers=alice
    )
    assert wrong.status_code == 422 and "name a labelled data set here" in wrong.text, wrong.text

    body["eval_dataset"] = {"name": "imagefolder", "path": labelled}
    submitted = httpx.post(f"{server}/v1/jobs", json=body, headers=alice)
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    read_events(server, f"/v1/jobs/{job_id}/events", alice, timeout=240)
    done = httpx.get(f"{server}/v1/jobs/{job_id}", headers=alice).json()
    assert done["status"] == "succeeded", done["error"]
    assert done["result"]["steps"] == 3 and done["config"]["eval_data"] == labelled  # 12 unlabelled images
    [knn] = httpx.get(f"{server}/v1/evaluations", params={"job": job_id}, headers=alice).json()
    assert (knn["num_train"], knn["num_test"]) == (12, 4)  # the labelled set's splits
    # An evaluation of the run, naming no data set, uses the run's evaluation set.
    again = httpx.post(f"{server}/v1/jobs", json={"kind": "eval", "job": job_id, "evaluate": ["knn"]}, headers=alice)
    assert again.status_code == 202 and again.json()["dataset"]["path"] == labelled, again.text


@pytest.fixture()
def app_with(settings):
    """A client of an API of its own with some settings changed; its lifespan runs (the sweep)."""
    from api.main import create_app

    clients = []

    def start(**changes) -> TestClient:
        client = TestClient(create_app(settings.with_(queue=settings.queue + "_idle", **changes), sweep=False))
        clients.append(client.__enter__())
        return client

    yield start
    for client in clients:
        client.__exit__(None, None, None)


def plain_tar(members: list[tuple]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def test_what_follows_the_end_marker_counts_against_the_unpacked_limit(app_with, alice):
    client = app_with(max_upload_bytes=4096)  # 16 KiB unpacked
    tar = plain_tar([member("train/a/0.png", png(0))])
    assert len(tar) <= 16384
    assert settled(client, alice, upload(client, alice, gzip.compress(tar)))["status"] == "ready"
    # The same tar, and a megabyte of zeros after its end marker in the same gzip stream: a few
    # hundred bytes sent, inflated in full.
    trailing = gzip.compress(tar + bytes(1 << 20))
    assert len(trailing) < 4096
    error = failed(client, alice, upload(client, alice, trailing, name="trailing"))
    assert "unpacked" in error and "16,384" in error


def test_members_folders_and_depth_are_capped(app_with, alice, settings):
    client = app_with(max_upload_members=20, max_upload_folders=10, max_upload_depth=5)
    before = everything_under(settings.uploads_folder)
    # Within every cap: 10 files in 6 folders, 3 deep.
    assert settled(client, alice, upload(client, alice, image_archive(image_files(per_class=3))))["status"] == "ready"
    after_good = everything_under(settings.uploads_folder)
    cases = {
        "CSSL_MAX_UPLOAD_MEMBERS": [member(f"train/a/{i}.png", b"x") for i in range(21)],
        # Empty folders, as members: what a small archive of a great many of them looks like.
        "CSSL_MAX_UPLOAD_FOLDERS": [member(f"train/{i}/", kind=tarfile.DIRTYPE) for i in range(10)]
        + [member("train/a/0.png", b"x")],
        # Folders that only the files' paths imply count too.
        "implied": [member(f"train/{i}/0.png", b"x") for i in range(10)],
        "CSSL_MAX_UPLOAD_DEPTH": [member("train/a/0.png", b"x"), member("train/a/b/c/d/0.png", b"x")],
    }
    for setting, members in cases.items():
        error = failed(client, alice, upload(client, alice, tar_gz(members), name=setting))
        assert (setting if setting != "implied" else "CSSL_MAX_UPLOAD_FOLDERS") in error, error
    assert len(after_good - before) > 0 and everything_under(settings.uploads_folder) == after_good


def test_an_upload_is_refused_when_the_disk_is_nearly_full(app_with, alice, settings):
    settings.uploads_folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(settings.uploads_folder).free
    before = everything_under(settings.uploads_folder)
    client = app_with(upload_min_free_bytes=free + 2**30)
    problem = assert_problem(upload(client, alice, image_archive(), name="no-room"), 507)
    assert "CSSL_UPLOAD_MIN_FREE_BYTES" in problem["detail"] and "try again later" in problem["detail"]
    # Room for what is left free, not for this archive on top of it (margins wide enough for
    # the other writers on this disk).
    big = io.BytesIO()
    with tarfile.open(fileobj=big, mode="w:gz", compresslevel=1) as tar:
        info, data = member("train/a/x.bin", random.Random(1).randbytes(64 << 20))
        tar.addfile(info, io.BytesIO(data))
    big = big.getvalue()
    client = app_with(upload_min_free_bytes=shutil.disk_usage(settings.uploads_folder).free - (32 << 20))
    assert "this upload needs" in assert_problem(upload(client, alice, big, name="no-room"), 507)["detail"]
    assert everything_under(settings.uploads_folder) == before and rows(settings, name="no-room") == []


def test_an_owner_quota_counts_unpacked_uploads(app_with, settings):
    owner, headers = named_owner(settings)
    client = app_with()
    first = settled(client, headers, upload(client, headers, image_archive()))
    used = first["unpacked_bytes"]
    # A failed upload takes nothing.
    failed(client, headers, upload(client, headers, BAD_ARCHIVES["device"][0]))

    client = app_with(upload_quota_bytes=used + 20_000)
    noise = tar_gz([member("train/a/x.bin", random.Random(2).randbytes(30_000))])
    for problem in (
        assert_problem(upload(client, headers, noise, name="over"), 413),
        assert_problem(streamed_upload(client.app, headers, noise, name="over"), 413),
    ):
        assert f"quota of {used + 20_000:,} bytes" in problem["detail"] and f"{used:,} are in use" in problem["detail"]
    # Small as sent, over the quota once inflated: the unpacking stops there.
    zeros = tar_gz([member("train/a/zeros.bin", bytes(65_536))])
    assert f"quota of {used + 20_000:,} bytes" in failed(client, headers, upload(client, headers, zeros, name="over"))
    assert [d["status"] for d in client.get("/v1/datasets/uploads", headers=headers).json()].count("ready") == 1
    # Within it, once the first is deleted.
    assert client.delete(f"/v1/datasets/uploads/{first['id']}", headers=headers).status_code == 204
    assert settled(client, headers, upload(client, headers, noise, name="fits"))["status"] == "ready"


def streamed_upload(app, headers, body: bytes, name: str) -> httpx.Response:
    """An upload without Content-Length, in 1 KiB chunks."""

    async def chunks():
        for start in range(0, len(body), 1024):
            yield body[start : start + 1024]

    async def post() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as http:
            return await http.post("/v1/datasets/uploads", params={"name": name}, content=chunks(), headers=headers)

    return asyncio.run(post())


def insert_upload(settings, owner: str, status: str, heartbeat_age: float = 0.0, error: str | None = None) -> str:
    from store import datasets
    from store.db import session_scope
    from store.models import utcnow

    upload_id = datasets.new_dataset_id()
    with session_scope(settings.database_url) as session:
        dataset = datasets.create_dataset(
            session, id=upload_id, owner=owner, name=status, sha256="0" * 64, size_bytes=100, status=status
        )
        dataset.error = error
        if status == "unpacking":
            dataset.heartbeat_at = utcnow() - timedelta(seconds=heartbeat_age)
    return upload_id


def test_a_job_naming_an_upload_that_is_not_ready_gets_409(client, settings):
    owner, headers = named_owner(settings)
    unpacking = insert_upload(settings, owner, "unpacking")
    broken = insert_upload(settings, owner, "failed", error="member 'a' is a link")
    for upload_id, says in ((unpacking, "still unpacking"), (broken, "failed to unpack (member 'a' is a link)")):
        response = client.post("/v1/jobs", json=job({"name": "imagefolder", "upload": upload_id}), headers=headers)
        assert says in assert_problem(response, 409)["detail"]
    # Another owner's is still no upload at all.
    bob = new_owner(settings)
    response = client.post("/v1/jobs", json=job({"name": "imagefolder", "upload": unpacking}), headers=bob)
    assert assert_problem(response, 422)["errors"][0]["loc"] == ["body", "dataset", "upload"]


def test_a_start_fails_lost_unpackings_and_sweeps_what_crashes_left(app_with, settings):
    owner, headers = named_owner(settings)
    incoming = settings.uploads_folder / ".incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    an_hour_ago = time.time() - 3600

    def left(name: str, *, old: bool, folder: bool = False) -> Path:
        path = incoming / name
        if folder:
            (path / "train/a").mkdir(parents=True)
            (path / "train/a/0.png").write_bytes(b"x")
        else:
            path.write_bytes(b"\x1f\x8b")
        if old:
            os.utime(path, (an_hour_ago, an_hour_ago))
        return path

    # Its API process died mid-unpacking: no heartbeat for longer than CSSL_HEARTBEAT_TIMEOUT.
    lost = insert_upload(settings, owner, "unpacking", heartbeat_age=settings.heartbeat_timeout + 5)
    lost_files = [left(f"{lost}.tar.gz", old=False), left(lost, old=True, folder=True)]
    # Still unpacking elsewhere: its staging folder is old, its heartbeat fresh.
    alive = insert_upload(settings, owner, "unpacking")
    alive_staging = left(alive, old=True, folder=True)
    stale = [
        left(f"{uuid.uuid4().hex}.tar.gz", old=True),
        left(uuid.uuid4().hex, old=True, folder=True),
        left(f"{uuid.uuid4().hex}.deleting", old=True, folder=True),
    ]
    fresh = left(f"{uuid.uuid4().hex}.tar.gz", old=False)

    client = app_with(upload_stale_after=600)
    by_id = {d["id"]: d for d in client.get("/v1/datasets/uploads", headers=headers).json()}
    assert by_id[lost]["status"] == "failed" and "upload it again" in by_id[lost]["error"]
    assert by_id[alive]["status"] == "unpacking"
    assert not any(p.exists() for p in lost_files + stale)
    assert alive_staging.exists() and fresh.exists()
    fresh.unlink()
    shutil.rmtree(alive_staging)

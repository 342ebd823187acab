"""Data roots and uploads against the real Postgres and Redis: a job reads only inside
CSSL_DATA_ROOTS and every refused path gets the same 422; the worker checks the path again;
uploads are streamed with a size limit, unpacked member by member (no absolute paths, '..',
links or devices), belong to their uploader, and cannot be deleted under a queued job."""

from __future__ import annotations

import asyncio
import hashlib
import io
import random
import tarfile
import uuid
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
    from store import tokens
    from store.db import session_scope

    with session_scope(settings.database_url) as session:
        return auth(tokens.create_token(session, f"owner-{uuid.uuid4().hex[:8]}"))


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
    return client.post("/v1/datasets/uploads", params={"name": name}, content=body,
                       headers={**headers, "Content-Type": "application/gzip"})


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
    refused = ["/etc", "../../../../etc", str(outside), str(tmp_path / "missing"), link_out.name, "not-there",
               "uploads", "."]
    details = set()
    for path in refused:
        problem = assert_problem(client.post("/v1/jobs", json=job({"name": "imagefolder", "path": path}), headers=alice), 422)
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
    problem = assert_problem(client.post("/v1/jobs", json=job({"name": "imagefolder", "path": f"{folder}-empty"}),
                                         headers=alice), 422)
    assert "not laid out as imagefolder needs" in problem["detail"]


def test_upload_an_image_folder_and_name_it_in_a_job(client, alice, settings):
    files = image_files()
    body = image_archive(files)
    response = upload(client, alice, body, name="pets")
    assert response.status_code == 201, response.text
    dataset = response.json()
    assert response.headers["location"] == f"/v1/datasets/uploads/{dataset['id']}"
    assert dataset["name"] == "pets" and dataset["status"] == "ready"
    assert dataset["sha256"] == hashlib.sha256(body).hexdigest() and dataset["size_bytes"] == len(body)
    assert dataset["num_files"] == len(files) == 16
    unpacked = settings.uploads_folder / dataset["id"]
    assert {str(p.relative_to(unpacked)) for p in unpacked.rglob("*") if p.is_file()} == set(files)
    assert (unpacked / "train/dog/3.png").read_bytes() == files["train/dog/3.png"]

    assert client.get(f"/v1/datasets/uploads/{dataset['id']}", headers=alice).json() == dataset
    assert [d["id"] for d in client.get("/v1/datasets/uploads", headers=alice).json()] == [dataset["id"]]
    # The built-in catalogue is unchanged: names, not uploads.
    assert "imagefolder" in {d["name"] for d in client.get("/v1/datasets", headers=alice).json()}

    submitted = client.post("/v1/jobs", json=job({"name": "imagefolder", "upload": dataset["id"]}), headers=alice)
    assert submitted.status_code == 202, submitted.text
    assert submitted.json()["dataset"] == {"name": "imagefolder", "path": f"uploads/{dataset['id']}", "upload": dataset["id"]}
    both = job({"name": "imagefolder", "upload": dataset["id"], "path": "mine"})
    assert "not both" in assert_problem(client.post("/v1/jobs", json=both, headers=alice), 422)["detail"]
    # The uploads folder is reached by id only, even by the uploader.
    by_path = client.post("/v1/jobs", json=job({"name": "imagefolder", "path": f"uploads/{dataset['id']}"}), headers=alice)
    assert assert_problem(by_path, 422)["errors"][0]["loc"] == ["body", "dataset", "path"]


def corrupt(archive: bytes) -> bytes:
    # A byte flipped in the compressed stream near its end: the members before it read well.
    damaged = bytearray(archive)
    damaged[-30] ^= 0xFF
    return bytes(damaged)


GOOD = [member(name, data) for name, data in image_files(per_class=3).items()]
ABSOLUTE = f"/tmp/cssl-absolute-{uuid.uuid4().hex[:6]}.png"
BAD_ARCHIVES = {
    "dot-dot": tar_gz([*GOOD, member("train/../../escaped.png", png(1))]),
    "absolute": tar_gz([*GOOD, member(ABSOLUTE, png(1))]),
    "symlink": tar_gz([*GOOD, member("train/cat/link.png", kind=tarfile.SYMTYPE, linkname="0.png")]),
    "hard-link": tar_gz([*GOOD, member("train/cat/hard.png", kind=tarfile.LNKTYPE, linkname="train/cat/0.png")]),
    "device": tar_gz([*GOOD, member("train/cat/null", kind=tarfile.CHRTYPE)]),
    "corrupt-gzip": corrupt(tar_gz(GOOD)),
    "cut-short": tar_gz(GOOD)[: len(tar_gz(GOOD)) * 2 // 3],
    "not-gzip": b"train/cat/0.png\n" * 100,
    "empty": tar_gz([member("train/", kind=tarfile.DIRTYPE)]),
}


@pytest.mark.parametrize("case", BAD_ARCHIVES)
def test_a_bad_archive_is_refused_and_leaves_nothing(client, alice, settings, case):
    before = everything_under(settings.uploads_folder)
    name = f"bad-{case}-{uuid.uuid4().hex[:6]}"
    problem = assert_problem(upload(client, alice, BAD_ARCHIVES[case], name=name), 422)
    assert problem["errors"][0]["loc"] == ["body"]
    assert everything_under(settings.uploads_folder) == before
    assert rows(settings, name=name) == []
    assert not Path(ABSOLUTE).exists() and not (settings.uploads_folder / "escaped.png").exists()
    assert client.get("/v1/datasets/uploads", headers=alice).json() == []


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
        assert "unpacked" in assert_problem(upload(client, alice, zeros, name="too-big-unpacked"), 413)["detail"]

    async def streamed() -> httpx.Response:
        # No Content-Length: the limit is counted as the chunks come, after some were written.
        async def chunks():
            for _ in range(10):
                yield noise[:1024]

        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as http:
            return await http.post("/v1/datasets/uploads", params={"name": "too-big-streamed"}, content=chunks(),
                                   headers=alice)

    assert_problem(asyncio.run(streamed()), 413)
    assert everything_under(settings.uploads_folder) == before
    assert [rows(settings, name=n) for n in ("too-big-declared", "too-big-unpacked", "too-big-streamed")] == [[], [], []]


def test_another_owner_can_neither_see_delete_nor_use_an_upload(client, alice, bob, settings):
    dataset = upload(client, alice, image_archive()).json()
    path = f"/v1/datasets/uploads/{dataset['id']}"
    assert_problem(client.get(path, headers=bob), 404)
    assert_problem(client.delete(path, headers=bob), 404)
    assert client.get("/v1/datasets/uploads", headers=bob).json() == []
    problem = assert_problem(client.post("/v1/jobs", json=job({"name": "imagefolder", "upload": dataset["id"]}), headers=bob), 422)
    assert problem["errors"][0]["loc"] == ["body", "dataset", "upload"] and "no upload" in problem["detail"]
    # Nor by the path it lies at: refused in the same words as any other.
    by_path = client.post("/v1/jobs", json=job({"name": "imagefolder", "path": f"uploads/{dataset['id']}"}), headers=bob)
    elsewhere = client.post("/v1/jobs", json=job({"name": "imagefolder", "path": "/etc"}), headers=bob)
    assert assert_problem(by_path, 422)["detail"] == assert_problem(elsewhere, 422)["detail"]
    # Still alice's, whole.
    assert client.get(path, headers=alice).json()["status"] == "ready"
    assert (settings.uploads_folder / dataset["id"] / "train").is_dir()


def test_an_upload_a_queued_job_uses_cannot_be_deleted(client, alice, settings):
    dataset = upload(client, alice, image_archive()).json()
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


@pytest.mark.parametrize("stored", ["uploads/{id}/.", "uploads/{id}/train/..", "./uploads/{id}",
                                    "uploads/../uploads/{id}", "uploads/.incoming"])
def test_the_worker_reaches_an_upload_by_its_id_alone(client, alice, settings, stored):
    """A job's stored data path is ``uploads/<id>`` exactly, or it reaches no upload: the worker
    does not follow any other path into the uploads folder (a row written by something else)."""
    from sqlalchemy import update

    from store.db import session_scope
    from store.models import Job
    from worker import runner

    dataset = upload(client, alice, image_archive()).json()
    queued = client.post("/v1/jobs", json=job({"name": "imagefolder", "upload": dataset["id"]}), headers=alice).json()
    assert queued["dataset"]["path"] == f"uploads/{dataset['id']}"
    with session_scope(settings.database_url) as session:
        session.execute(update(Job).where(Job.id == queued["id"])
                        .values(dataset_path=stored.format(id=dataset["id"])))
    assert runner.run_job(settings, queued["id"], "w-check") == "failed"
    failed = client.get(f"/v1/jobs/{queued['id']}", headers=alice).json()
    assert "no longer readable" in failed["error"] and failed["result"] is None


def test_a_data_set_over_the_decoded_bytes_limit_fails_the_job_before_decoding(client, alice, settings):
    from worker import runner

    dataset = upload(client, alice, image_archive()).json()
    queued = client.post("/v1/jobs", json=job({"name": "imagefolder", "upload": dataset["id"]}), headers=alice).json()
    # 16 images at imagefolder's 64 px take 196,608 bytes decoded.
    assert runner.run_job(settings.with_(max_decoded_bytes=196_607), queued["id"], "w-check") == "failed"
    failed = client.get(f"/v1/jobs/{queued['id']}", headers=alice).json()
    assert failed["result"] is None and failed["progress"] is None
    assert failed["error"].endswith(": 16 images of 64x64 take 196,608 bytes decoded in memory, more than the 196,607 "
                                    "bytes allowed (CSSL_MAX_DECODED_BYTES); use fewer images or a smaller image size, "
                                    "or raise CSSL_MAX_DECODED_BYTES"), failed["error"]


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
    assert done["error"] == (f"{tree}/test/cat/9.png is a link; links inside an image folder are not followed: "
                             "put the files themselves in the folder")


def test_an_uploaded_data_set_trains_on_the_worker(server, worker, alice):
    body = image_archive()
    response = httpx.post(f"{server}/v1/datasets/uploads", params={"name": "pets"}, content=body, headers=alice, timeout=60)
    assert response.status_code == 201, response.text
    upload_id = response.json()["id"]
    submitted = httpx.post(
        f"{server}/v1/jobs",
        json={**job({"name": "imagefolder", "upload": upload_id}), "evaluate": ["knn"], "config": {**FEW_STEPS, "knn": {"k": 3}}},
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

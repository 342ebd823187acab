"""A job's provenance through HTTP: the real worker records what it ran with when an attempt
starts, and GET /v1/jobs/{id} shows it, for pretrain and eval jobs alike."""

from __future__ import annotations

import io
import random
import socket
import uuid

import httpx
import torch
from PIL import Image

from .support import DATA_ROOT, read_events

CONFIG = {"backbone": "small", "epochs": 1, "batch_size": 8, "image_size": 16, "precision": "fp32"}


def image_folder(name: str):
    """train/<class>/ with 12 images per class, test/<class>/ with 3: two classes of 16 px noise."""
    root = DATA_ROOT / name
    for c, label in enumerate(("cat", "dog")):
        for split, count in (("train", 12), ("test", 3)):
            (root / split / label).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                out = io.BytesIO()
                pixels = random.Random(f"{c}-{split}-{i}").randbytes(16 * 16 * 3)
                Image.frombytes("RGB", (16, 16), pixels).save(out, format="PNG")
                (root / split / label / f"{i}.png").write_bytes(out.getvalue())
    return root


def run(base: str, headers: dict[str, str], body: dict) -> dict:
    submitted = httpx.post(f"{base}/v1/jobs", json=body, headers=headers)
    assert submitted.status_code == 202, submitted.text
    assert submitted.json()["provenance"] is None  # nothing ran yet
    read_events(base, f"/v1/jobs/{submitted.json()['id']}/events", headers, timeout=180)
    done = httpx.get(f"{base}/v1/jobs/{submitted.json()['id']}", headers=headers)
    assert done.status_code == 200 and done.json()["status"] == "succeeded", done.text
    return done.json()


def test_a_finished_job_says_what_code_libraries_host_and_data_made_it(server, worker, alice):
    from cssl_core.data import data_fingerprint

    folder = image_folder(f"provenance-{uuid.uuid4().hex[:8]}")
    dataset = {"name": "imagefolder", "path": folder.name}
    job = run(
        server, alice, {"kind": "pretrain", "method": "simclr", "dataset": dataset, "config": CONFIG, "evaluate": []}
    )
    expected = data_fingerprint("imagefolder", folder, image_size=16)
    assert expected["files"] == 30 and len(expected["fingerprint"]) == 64

    provenance = job["provenance"]
    assert provenance["torch"] == torch.__version__ and provenance["cuda"] == torch.version.cuda
    assert provenance["host"] == socket.gethostname()  # the worker runs on this machine
    assert provenance["device_type"] in ("cpu", "cuda") and provenance["device"]
    assert provenance["code"] and provenance["code_source"] in ("env", "git", "package")
    assert set(provenance["determinism"]) >= {"deterministic_algorithms", "cudnn_benchmark", "matmul_tf32"}
    data = provenance["data"]
    assert (data["dataset"], data["image_size"]) == ("imagefolder", 16)
    assert (data["fingerprint"], data["files"], data["bytes"]) == (
        expected["fingerprint"],
        expected["files"],
        expected["bytes"],
    )

    # An eval job of its checkpoint reads the same files, and says so.
    evaluation = run(server, alice, {"kind": "eval", "job": job["id"], "evaluate": ["knn"]})
    assert evaluation["provenance"]["data"]["fingerprint"] == expected["fingerprint"]
    assert evaluation["provenance"]["torch"] == torch.__version__

"""A run's provenance: every key there, the values the running process really has, and a data
fingerprint that follows the files of a data set."""

import io
import json
import os
import platform
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image

import cssl_core
from cssl_core import provenance
from cssl_core.data import data_fingerprint, load_dataset

ROOT = Path(__file__).resolve().parents[1]
KEYS = {
    "code", "code_source", "code_dirty", "python", "torch", "torchvision", "cuda", "cudnn", "device",
    "device_type", "determinism", "host", "data",
}  # fmt: skip


def png(colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture
def tree(tmp_path) -> Path:
    root = tmp_path / "tree"
    for split in ("train", "test"):
        for c, name in enumerate(("cat", "dog")):
            (root / split / name).mkdir(parents=True)
            for i in range(2):
                (root / split / name / f"{i}.png").write_bytes(png((40 * c, 10 * i, 7)))
    return root


def test_every_key_holds_what_this_process_runs_with(tree):
    found = provenance.collect("imagefolder", tree, device="cpu")
    assert set(found) == KEYS
    assert json.loads(json.dumps(found)) == found  # stored as JSON as it is
    assert found["torch"] == torch.__version__ and found["torchvision"] == torchvision.__version__
    assert found["python"] == platform.python_version()
    assert found["cuda"] == torch.version.cuda
    assert found["host"] == socket.gethostname()
    assert found["device_type"] == "cpu" and isinstance(found["device"], str) and found["device"]
    assert found["determinism"] == {
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_tf32": torch.backends.cudnn.allow_tf32,
    }
    assert found["data"]["dataset"] == "imagefolder" and found["data"]["path"] == str(tree)
    assert found["data"]["files"] == 8 and found["data"]["bytes"] == sum(f.stat().st_size for f in tree.rglob("*.png"))
    assert len(found["data"]["fingerprint"]) == 64


def test_the_flags_are_read_when_asked(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", not torch.backends.cudnn.benchmark)
    assert provenance.collect("synthetic")["determinism"]["cudnn_benchmark"] == torch.backends.cudnn.benchmark


def test_the_fingerprint_follows_the_files_and_not_where_they_are(tree, tmp_path):
    first = data_fingerprint("imagefolder", tree)["fingerprint"]
    assert data_fingerprint("imagefolder", tree)["fingerprint"] == first
    # Decoding (and caching) the set changes nothing, and a copy that keeps mtimes is the same set.
    load_dataset("imagefolder", tree, cache_dir=tmp_path / "cache", image_size=8)
    assert data_fingerprint("imagefolder", tree, cache_dir=tmp_path / "cache")["fingerprint"] == first
    assert data_fingerprint("imagefolder", shutil.copytree(tree, tmp_path / "copy"))["fingerprint"] == first

    (tree / "train" / "cat" / "2.png").write_bytes(png((1, 2, 3)))
    added = data_fingerprint("imagefolder", tree)
    assert added["fingerprint"] != first and added["files"] == 9
    (tree / "train" / "cat" / "2.png").unlink()
    assert data_fingerprint("imagefolder", tree)["fingerprint"] == first
    image = tree / "train" / "dog" / "0.png"
    image.write_bytes(png((200, 100, 50)) + b"\0")  # one image rewritten
    assert data_fingerprint("imagefolder", tree)["fingerprint"] != first
    assert data_fingerprint("imagefolder", tmp_path / "nothing")["fingerprint"] is None


def test_a_built_in_set_is_known_by_its_name_and_size():
    digits, synthetic = data_fingerprint("digits"), data_fingerprint("synthetic")
    assert digits["fingerprint"] == data_fingerprint("digits")["fingerprint"] != synthetic["fingerprint"]
    assert (digits["image_size"], digits["path"], digits["files"]) == (32, None, None)


def test_the_code_is_the_baked_commit_else_the_checkout_else_the_package(monkeypatch):
    monkeypatch.setenv("CSSL_GIT_COMMIT", "0123abcd")
    assert provenance.code_version() == {"code": "0123abcd", "code_source": "env", "code_dirty": None}
    monkeypatch.setenv("CSSL_GIT_COMMIT", "")
    if (ROOT / ".git").exists():
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
        found = provenance.code_version()
        assert found["code"] == head.stdout.strip() and found["code_source"] == "git"
        assert isinstance(found["code_dirty"], bool)
    monkeypatch.setattr(provenance, "_git_checkout", lambda root: None)
    found = provenance.code_version()
    assert found["code_source"] == "package" and found["code"] in (provenance._version("cssl"), cssl_core.__version__)


def test_a_checkout_is_dirty_while_a_tracked_file_has_changes(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()

    def git(*args):
        env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
        command = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org", *args]
        return subprocess.run(command, capture_output=True, text=True, check=True, env=env).stdout.strip()

    git("init", "-q")
    (repo / "a.py").write_text("x = 1\n")
    git("add", "a.py")
    git("commit", "-qm", "one")
    (repo / "untracked.txt").write_text("not part of the code")
    assert provenance._git_checkout.__wrapped__(repo) == (git("rev-parse", "HEAD"), False)
    (repo / "a.py").write_text("x = 2\n")
    assert provenance._git_checkout.__wrapped__(repo) == (git("rev-parse", "HEAD"), True)
    # A folder inside a work tree is not the top of one: no commit of cssl there.
    (repo / "sub").mkdir()
    assert provenance._git_checkout.__wrapped__(repo / "sub") is None
    assert provenance._git_checkout.__wrapped__(tmp_path) is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")
def test_a_missing_gpu_leaves_the_device_unknown():
    assert provenance.device_model("cuda") == {"device": None, "device_type": "cuda"}

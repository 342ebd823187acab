"""What a run was made with: the code, the libraries, the device, the determinism flags, the host
and the data. The worker stores it with each job when an attempt starts; ``cssl pretrain`` writes
it as ``provenance.json`` beside the run's checkpoints.

Cheap to take: nothing is trained or decoded, and a data set of files is known by its file index
(names, sizes, mtimes), the same index its decoded cache entry is named by.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

import cssl_core
from cssl_core.data import data_fingerprint
from cssl_core.device import resolve_device
from cssl_core.errors import ConfigError

# Top-level keys whose values are plain strings, so that results can be grouped by them.
GROUP_KEYS = ("code", "device", "torch", "python", "cuda", "host")


def collect(
    dataset: str,
    data: str | os.PathLike | None = None,
    *,
    device: str = "auto",
    image_size: int | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """The provenance of a run on ``dataset`` (files at ``data``) on ``device``, as JSON-ready values.

    ``code`` is the git commit the code was built from (``CSSL_GIT_COMMIT``, set in the images),
    else the commit of the source checkout cssl_core runs from (``code_dirty``: with uncommitted
    changes to tracked files), else the installed package's version; ``code_source`` says which.
    ``cuda`` and ``cudnn`` are None on a CPU build of torch; ``device`` is the GPU's name, or the
    CPU's model when the run is on the CPU.
    """
    return {
        **code_version(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": _torchvision_version(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        **device_model(device),
        "determinism": {
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "cudnn_deterministic": torch.backends.cudnn.deterministic,
            "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn_tf32": torch.backends.cudnn.allow_tf32,
        },
        "host": socket.gethostname(),
        "data": data_fingerprint(dataset, data, cache_dir=cache_dir, image_size=image_size),
    }


def code_version() -> dict[str, Any]:
    commit = os.environ.get("CSSL_GIT_COMMIT", "").strip()
    if commit:
        return {"code": commit, "code_source": "env", "code_dirty": None}
    checkout = _git_checkout(Path(cssl_core.__file__).resolve().parents[1])
    if checkout is not None:
        commit, dirty = checkout
        return {"code": commit, "code_source": "git", "code_dirty": dirty}
    version = _version("cssl") or cssl_core.__version__
    return {"code": version, "code_source": "package", "code_dirty": None}


@functools.cache  # a process runs one checkout; git is asked once
def _git_checkout(root: Path) -> tuple[str, bool] | None:
    """``(HEAD, dirty)`` when ``root`` is the top of a git work tree, else None (an installed
    package inside some other repository's tree is not a checkout of cssl)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        if Path(git("rev-parse", "--show-toplevel")).resolve() != root:
            return None
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return commit, dirty


def device_model(name: str) -> dict[str, Any]:
    """``device``: what ``name`` (auto, cpu, cuda[:N]) runs on; ``device_type``: cuda or cpu."""
    try:
        device = resolve_device(name)
    except ConfigError:  # no GPU where one was asked for: the run itself says so
        return {"device": None, "device_type": name}
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return {"device": torch.cuda.get_device_name(index), "device_type": "cuda"}
    return {"device": _cpu_model(), "device_type": device.type}


@functools.cache
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or sys.platform


def _torchvision_version() -> str | None:
    try:
        import torchvision
    except ImportError:
        return None
    return torchvision.__version__


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None

"""Write the lock files from the packages installed in this environment.

    .venv/bin/pip install -e '.[dev]' && .venv/bin/python scripts/lock.py   # `make lock`

``requirements.lock`` pins every package the service needs at run time (the dependencies in
pyproject.toml and everything they pull in, on Linux x86-64 with this Python), and
``requirements-dev.lock`` adds the test tools. Each pin carries the sha256 of the file pip
installs for it on this platform (Linux x86-64, CPython 3.11), as the package index publishes it:
``pip install --dry-run --report`` resolves the pins against the configured indexes (PyPI, and for
torch, torchvision and the CUDA wheels this machine's index) and reports each file's hash, which
pip checks against the bytes whenever it downloads one. ``make venv``, CI and both Dockerfiles
install them with ``--require-hashes``, then the project itself with ``--no-deps``, so a fresh
machine gets exactly the files that were tested. ``--check`` exits non-zero when the installed
packages differ from the pins (it does not ask the index again).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
RUNTIME, DEV = ROOT / "requirements.lock", ROOT / "requirements-dev.lock"


def closure(requirements: list[str]) -> dict[str, str]:
    """Installed name -> version for ``requirements`` and everything they require (markers
    evaluated for this interpreter and platform, extras followed)."""
    pinned: dict[str, str] = {}
    pending = [(Requirement(text), "") for text in requirements]
    seen: set[tuple[str, str]] = set()
    while pending:
        requirement, extra = pending.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(requirement.name)
        for wanted in sorted(requirement.extras) or [""]:
            if (name, wanted) in seen:
                continue
            seen.add((name, wanted))
            try:
                distribution = metadata.distribution(requirement.name)
            except metadata.PackageNotFoundError:
                sys.exit(f"{requirement.name} is required but not installed; run pip install -e '.[dev]' first")
            pinned[name] = distribution.version
            pending += [(Requirement(text), wanted) for text in distribution.requires or []]
    return pinned


def file_hashes(pins: dict[str, str]) -> dict[str, str]:
    """Name -> the sha256 of the file pip would install for ``name==version`` here, from the
    package index (no package is installed)."""
    with tempfile.TemporaryDirectory() as tmp:
        requirements, report = Path(tmp) / "pins.txt", Path(tmp) / "report.json"
        requirements.write_text("".join(f"{name}=={version}\n" for name, version in sorted(pins.items())))
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--dry-run",
                "--ignore-installed",
                "--no-deps",
                "--quiet",
                "--report",
                str(report),
                "-r",
                str(requirements),
            ],
            check=True,
        )
        installs = json.loads(report.read_text())["install"]
    hashes = {}
    for item in installs:
        archive = item["download_info"].get("archive_info", {})
        digest = (archive.get("hashes") or {}).get("sha256")
        if digest is None and archive.get("hash", "").startswith("sha256="):
            digest = archive["hash"].removeprefix("sha256=")
        if digest:
            hashes[canonicalize_name(item["metadata"]["name"])] = digest
    missing = sorted(set(pins) - set(hashes))
    if missing:
        sys.exit(f"the package index gave no sha256 for: {', '.join(missing)}; the lock files were not written")
    return hashes


def render(pins: dict[str, str], hashes: dict[str, str], header: str) -> str:
    return header + "".join(
        f"{name}=={version} \\\n    --hash=sha256:{hashes[name]}\n" for name, version in sorted(pins.items())
    )


def read_pins(path: Path) -> dict[str, str]:
    """Name -> version of the pins in a lock file (its hashes and its ``-r`` line left aside)."""
    return {
        canonicalize_name(found.group(1)): found.group(2)
        for found in re.finditer(r"^([A-Za-z0-9._-]+)==(\S+)", path.read_text(), re.MULTILINE)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the lock files instead of writing them")
    args = parser.parse_args()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = closure(project["dependencies"])
    dev = closure(project["dependencies"] + project["optional-dependencies"]["dev"])
    pins = {RUNTIME: runtime, DEV: {k: v for k, v in dev.items() if k not in runtime}}
    if args.check:
        stale = [path.name for path, wanted in pins.items() if not path.exists() or read_pins(path) != wanted]
        if stale:
            sys.exit(f"out of date with the installed packages: {', '.join(stale)} (run make lock)")
        print("lock files match the installed packages")
        return
    hashes = file_hashes(dev)
    note = (
        "# Written by scripts/lock.py (make lock) from a tested environment, for Linux x86-64 and CPython 3.11;\n"
        "# install with pip install --require-hashes -r.\n"
    )
    files = {RUNTIME: render(runtime, hashes, note), DEV: render(pins[DEV], hashes, note + "-r requirements.lock\n")}
    for path, text in files.items():
        path.write_text(text)
        print(f"{path.name}: {text.count('==')} packages")


if __name__ == "__main__":
    main()

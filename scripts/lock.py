"""Write the lock files from the packages installed in this environment.

    .venv/bin/pip install -e '.[dev]' && .venv/bin/python scripts/lock.py   # `make lock`

``requirements.lock`` pins every package the service needs at run time (the dependencies in
pyproject.toml and everything they pull in, on Linux x86-64 with this Python), and
``requirements-dev.lock`` adds the test tools. ``make venv``, CI and both Dockerfiles install
from them, then the project itself with ``--no-deps``, so a fresh machine gets exactly what was
tested. ``--check`` exits non-zero when the installed packages differ from the lock files.
"""

from __future__ import annotations

import argparse
import sys
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


def render(pins: dict[str, str], header: str) -> str:
    return header + "".join(f"{name}=={version}\n" for name, version in sorted(pins.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the lock files instead of writing them")
    args = parser.parse_args()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = closure(project["dependencies"])
    dev = closure(project["dependencies"] + project["optional-dependencies"]["dev"])
    note = "# Written by scripts/lock.py (make lock) from a tested environment; install with pip install -r.\n"
    files = {
        RUNTIME: render(runtime, note),
        DEV: render({k: v for k, v in dev.items() if k not in runtime}, note + "-r requirements.lock\n"),
    }
    if args.check:
        stale = [path.name for path, text in files.items() if not path.exists() or path.read_text() != text]
        if stale:
            sys.exit(f"out of date with the installed packages: {', '.join(stale)} (run make lock)")
        print("lock files match the installed packages")
        return
    for path, text in files.items():
        path.write_text(text)
        print(f"{path.name}: {text.count('==')} packages")


if __name__ == "__main__":
    main()

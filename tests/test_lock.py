"""The lock files pin what this environment runs: a dependency added to pyproject.toml but not
locked (or a lock edited by hand) fails here, before a fresh machine installs something else."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_lock_files_match_the_installed_packages():
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "lock.py"), "--check"], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr + run.stdout


def test_every_locked_line_is_an_exact_pin_with_its_sha256():
    for name in ("requirements.lock", "requirements-dev.lock"):
        # A requirement spans its continuation lines: "name==version \\" then "    --hash=sha256:<64 hex>".
        text = (ROOT / name).read_text().replace("\\\n", " ")
        for line in text.splitlines():
            if line and not line.startswith(("#", "-r ")):
                pin, *options = line.split()
                assert "==" in pin and not any(c in pin for c in "<>~*"), f"{name}: {line}"
                hashes = [re.fullmatch(r"--hash=sha256:[0-9a-f]{64}", option) for option in options]
                assert hashes and all(hashes), f"{name}: {line}"


def test_every_install_of_the_lock_checks_the_hashes():
    installs = [
        (name, line)
        for name in ("Makefile", "Dockerfile.api", "Dockerfile.worker")
        for line in (ROOT / name).read_text().replace("\\\n", " ").splitlines()
        if "pip install" in line and "-r requirements" in line
    ]
    assert {name for name, _ in installs} == {"Makefile", "Dockerfile.api", "Dockerfile.worker"}
    for name, line in installs:
        assert "--require-hashes" in line, f"{name}: {line}"

"""The lock files pin what this environment runs: a dependency added to pyproject.toml but not
locked (or a lock edited by hand) fails here, before a fresh machine installs something else."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_lock_files_match_the_installed_packages():
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "lock.py"), "--check"], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr + run.stdout


def test_every_locked_line_is_an_exact_pin():
    for name in ("requirements.lock", "requirements-dev.lock"):
        for line in (ROOT / name).read_text().splitlines():
            if line and not line.startswith(("#", "-r ")):
                assert "==" in line and not any(c in line for c in "<>~*"), f"{name}: {line}"

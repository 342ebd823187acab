"""Child processes of the service: a free port to serve on, waiting until one answers over HTTP,
and stopping one. The CLI, the tests and the benchmarks start and stop the API and the workers
through these."""

from __future__ import annotations

import signal
import socket
import subprocess
import time

import httpx


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(process: subprocess.Popen, timeout: float, sig: int = signal.SIGTERM) -> int:
    """Send ``sig`` and wait up to ``timeout`` seconds, then SIGKILL a process still running.

    SIGTERM is a worker's warm shutdown: a running job checkpoints at its next step and goes back
    to the queue (one signal only: a second would make it a cold one). SIGQUIT stops a Celery
    worker at once. A process that has already exited gets no signal. Returns the exit code,
    ``-signal.SIGKILL`` when it had to be killed.
    """
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def wait_until_ready(url: str, process: subprocess.Popen | None = None, timeout: float = 60) -> bool:
    """Poll ``url`` until it answers 200: True then; False when ``process`` exits first or after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return False
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    return False

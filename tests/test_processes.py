"""Stopping and waiting for child processes (cli/processes.py), with real children."""

import signal
import subprocess
import sys
import time

from cli.processes import free_port, stop_process, wait_until_ready


def child(handler: str) -> subprocess.Popen:
    """A Python child that installs ``handler`` (code run at start), says so, and sleeps."""
    code = f"import signal, sys, time\n{handler}\nprint('ready', flush=True)\ntime.sleep(60)"
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "ready\n"  # the handler is in place before any signal
    return process


def test_a_child_that_ignores_the_signal_is_killed_after_the_timeout():
    process = child("signal.signal(signal.SIGTERM, signal.SIG_IGN)")
    begin = time.monotonic()
    assert stop_process(process, timeout=1) == -signal.SIGKILL
    assert 1 <= time.monotonic() - begin < 10
    assert process.poll() is not None


def test_a_child_that_exits_on_the_signal_is_not_killed_and_its_exit_code_is_returned():
    process = child("signal.signal(signal.SIGTERM, lambda *_: sys.exit(3))")
    begin = time.monotonic()
    assert stop_process(process, timeout=30) == 3
    assert time.monotonic() - begin < 10


def test_the_signal_sent_is_the_one_asked_for():
    process = child("signal.signal(signal.SIGQUIT, lambda *_: sys.exit(4))")
    assert stop_process(process, timeout=30, sig=signal.SIGQUIT) == 4


def test_a_child_that_has_exited_gets_no_signal_and_keeps_its_exit_code():
    process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(5)"])
    process.wait()
    assert stop_process(process, timeout=1) == 5


def test_waiting_until_ready_ends_when_the_url_answers_or_the_process_exits():
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_until_ready(f"http://127.0.0.1:{port}/", server, timeout=30)
    finally:
        stop_process(server, timeout=5)
    begin = time.monotonic()
    assert not wait_until_ready(f"http://127.0.0.1:{port}/", server, timeout=30)
    assert time.monotonic() - begin < 5

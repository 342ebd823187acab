"""A job on two nodes, for real: two hosts as two network namespaces joined by a bridge, a
worker in each, Postgres and Redis reached from them through forwarders at the bridge's address
in the root namespace. The job's ranks meet through torch's c10d rendezvous at the claiming
worker's address, gloo talks over the bridge, and the run gives the losses of one node with two
processes; a node killed mid-run fails the attempt on the other, and the job resumes from its
last checkpoint once a fresh worker stands in.

Needs root and ``ip`` (iproute2) and ``socat``; skipped, saying so, where namespaces cannot be made.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from cli.service import worker_command

from .support import SERVICE_ENV, TINY, Process, needs_servers, start_api, wait_for

COLLECTIVE_TIMEOUT = 20  # seconds; a dead peer's closed sockets end the others' collectives well before
RENDEZVOUS_TIMEOUT = 120  # seconds; a fresh worker stands in well within it
QUEUE = SERVICE_ENV["CSSL_QUEUE"] + "_nodes"


def _why_no_namespaces() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    missing = [tool for tool in ("ip", "socat") if shutil.which(tool) is None]
    if missing:
        return f"needs {' and '.join(missing)} (iproute2, socat) on the PATH"
    probe = f"cssl-probe-{uuid.uuid4().hex[:6]}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode:
        return f"cannot create a network namespace here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


WHY = _why_no_namespaces()
pytestmark = [
    needs_servers("workers in namespaces reach Postgres and Redis through forwarders"),
    pytest.mark.skipif(WHY is not None, reason=f"two hosts as network namespaces: {WHY}"),
]


def sh(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode:
        raise AssertionError(f"{' '.join(argv)}: {done.stderr.strip()}")


class Hosts:
    """Two namespaces ``<tag>a`` and ``<tag>b`` on a bridge (10.X.Y.0/24: the root side .1, the
    hosts .2 and .3), forwarders to Postgres and Redis at .1, and the workers started in them."""

    def __init__(self, logs):
        self.tag = f"cs{uuid.uuid4().hex[:5]}"
        net = int(self.tag[2:], 16)
        self.prefix = f"10.{200 + net % 50}.{net % 250}"
        self.gateway = f"{self.prefix}.1"
        self.bridge = f"{self.tag}br"
        self.names = {"a": f"{self.tag}a", "b": f"{self.tag}b"}
        self.addresses = {"a": f"{self.prefix}.2", "b": f"{self.prefix}.3"}
        self.logs = logs
        self.forwarders: list[subprocess.Popen] = []
        self.workers: dict[str, Process] = {}
        self.started = 0

    def up(self) -> None:
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")
        for host, namespace in self.names.items():
            outside, inside = f"{self.tag}{host}o", f"{self.tag}{host}i"
            sh("ip", "netns", "add", namespace)
            sh("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
            sh("ip", "link", "set", outside, "master", self.bridge)
            sh("ip", "link", "set", outside, "up")
            sh("ip", "link", "set", inside, "netns", namespace)
            sh("ip", "-n", namespace, "addr", "add", f"{self.addresses[host]}/24", "dev", inside)
            sh("ip", "-n", namespace, "link", "set", inside, "up")
            sh("ip", "-n", namespace, "link", "set", "lo", "up")
        for port in (
            urlsplit(SERVICE_ENV["CSSL_DATABASE_URL"]).port or 5432,
            urlsplit(SERVICE_ENV["CSSL_BROKER_URL"]).port or 6379,
        ):
            self.forwarders.append(
                subprocess.Popen(
                    ["socat", f"TCP-LISTEN:{port},bind={self.gateway},fork,reuseaddr", f"TCP:127.0.0.1:{port}"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        time.sleep(0.5)

    def env(self, host: str, base: dict[str, str]) -> dict[str, str]:
        """A worker's environment on ``host``: the servers at the gateway, its own address and interface."""
        return {
            **base,
            "CSSL_DATABASE_URL": _at(base["CSSL_DATABASE_URL"], self.gateway),
            "CSSL_BROKER_URL": _at(base["CSSL_BROKER_URL"], self.gateway),
            "CSSL_WORKER_QUEUES": "cpu",
            "CSSL_NODE_ADDRESS": self.addresses[host],
            "GLOO_SOCKET_IFNAME": f"{self.tag}{host}i",
            "CSSL_COLLECTIVE_TIMEOUT": str(COLLECTIVE_TIMEOUT),
            "CSSL_RENDEZVOUS_TIMEOUT": str(RENDEZVOUS_TIMEOUT),
        }

    def start_worker(self, host: str, base: dict[str, str]) -> Process:
        self.started += 1
        name = f"node-{host}{self.started}"
        argv = ["ip", "netns", "exec", self.names[host], *worker_command(name)]
        worker = Process(argv, self.env(host, base), self.logs / f"{name}.log")
        self.workers[host] = worker
        worker.wait_for(" ready.", timeout=90)
        return worker

    def kill(self, host: str) -> None:
        """Every process of the host at once (its worker and its ranks), as a machine that dies."""
        kill_all(self.names[host])
        self.workers[host].popen.wait(timeout=10)
        self.workers[host].handle.close()

    def down(self) -> None:
        for worker in self.workers.values():
            if worker.popen.poll() is None:
                worker.stop(signal.SIGQUIT)
        for host, namespace in self.names.items():
            kill_all(namespace)
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
            subprocess.run(["ip", "link", "del", f"{self.tag}{host}o"], capture_output=True)
        for forwarder in self.forwarders:
            forwarder.terminate()
            forwarder.wait(timeout=10)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)


def kill_all(namespace: str) -> None:
    """SIGKILL to every process in the namespace."""
    pids = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)


def _at(url: str, host: str) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.replace(parts.hostname or "", host, 1)
    return urlunsplit(parts._replace(netloc=netloc))


@pytest.fixture(scope="module")
def hosts(service_env, tmp_path_factory):
    from dispatch.broker import delete_queue

    env = {**service_env, "CSSL_QUEUE": QUEUE}
    logs = tmp_path_factory.mktemp("nodes")
    hosts = Hosts(logs)
    api = None
    try:
        hosts.up()
        api, base = start_api(env, logs / "api.log")
        for host in hosts.names:
            hosts.start_worker(host, env)
        hosts.base, hosts.service_env = base, env
        yield hosts
    finally:
        hosts.down()
        if api is not None:
            api.stop()
        delete_queue(env["CSSL_BROKER_URL"], QUEUE)


def submit(base, headers, resources, **config):
    body = {
        "method": "simclr",
        "dataset": {"name": "synthetic"},
        "config": {**TINY, "device": "cpu", **config},
        "evaluate": [],
        "resources": {"device": "cpu", **resources},
    }
    response = httpx.post(f"{base}/v1/jobs", json=body, headers=headers, timeout=30)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def get(base, path, headers):
    response = httpx.get(f"{base}{path}", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    return response.json() if "json" in response.headers["content-type"] else response.text


def finished(base, headers, job_id, timeout=300):
    return wait_for(
        lambda: (j := get(base, f"/v1/jobs/{job_id}", headers))["status"] not in ("queued", "running") and j,
        timeout,
        message=f"job {job_id} to finish",
    )


def losses(base, headers, job_id) -> list[tuple[int, float]]:
    series = get(base, f"/v1/jobs/{job_id}/metrics", headers)["series"]["loss"]
    return [(point["step"], point["value"]) for point in sorted(series, key=lambda p: p["step"])]


def test_two_nodes_give_the_losses_of_one_node_with_two_processes(hosts, alice):
    base = hosts.base
    one = submit(base, alice, {}, nproc=2)
    done_one = finished(base, alice, one)
    two = submit(base, alice, {"nodes": 2}, nproc=1)
    done_two = finished(base, alice, two)
    assert done_one["status"] == done_two["status"] == "succeeded", (done_one["error"], done_two["error"])
    assert done_two["resources"]["nodes"] == 2 and done_two["attempt"] == 1
    steps = TINY["subset"] // TINY["batch_size"]
    assert done_one["result"]["steps"] == done_two["result"]["steps"] == steps
    ref, got = losses(base, alice, one), losses(base, alice, two)
    # One voice for the two nodes: a point per step.
    assert [s for s, _ in got] == [s for s, _ in ref] == list(range(1, steps + 1))
    # The first steps as in tests/test_distributed.py; later ones drift by float noise.
    assert [v for _, v in got[:3]] == pytest.approx([v for _, v in ref[:3]], rel=1e-4), (got, ref)
    log = get(base, f"/v1/jobs/{two}/logs", alice)
    assert "waits for 1 more nodes at" in log, log


def test_a_node_killed_mid_run_fails_the_attempt_and_the_job_resumes(hosts, settings, alice):
    from .test_drills import newest_checkpoint_step, progress_step, state_changes

    base = hosts.base
    epochs, steps_per_epoch = 12, TINY["subset"] // TINY["batch_size"]
    job = submit(base, alice, {"nodes": 2}, nproc=1, epochs=epochs, checkpoint_every=1)
    step = wait_for(
        lambda: (s := newest_checkpoint_step(settings, job)) > 0 and s,
        timeout=180,
        interval=0.05,
        message="a first checkpoint",
    )
    wait_for(lambda: progress_step(settings, job) > step, timeout=60, interval=0.05, message="steps past it")
    # The host that did not claim the job: its node dies, and the first node's collectives with it.
    claimer = get(base, f"/v1/jobs/{job}", alice)["worker"]
    other = next(host for host, worker in hosts.workers.items() if not claimer.startswith(_name(worker)))
    hosts.kill(other)
    killed = time.monotonic()
    wait_for(
        lambda: (j := get(base, f"/v1/jobs/{job}", alice))["status"] != "running" or j["attempt"] > 1,
        timeout=COLLECTIVE_TIMEOUT,
        interval=0.2,
        message="the attempt to be given back",
    )
    assert time.monotonic() - killed < COLLECTIVE_TIMEOUT
    hosts.start_worker(other, hosts.service_env)  # a fresh machine stands in
    done = finished(base, alice, job)
    assert done["status"] == "succeeded", done["error"]
    assert done["attempt"] == 2 and done["result"]["steps"] == epochs * steps_per_epoch
    log = get(base, f"/v1/jobs/{job}/logs", alice)
    assert "a process of the run failed" in log, log
    assert "resuming from" in log, log
    states = state_changes(base, job, alice)
    assert states == [("queued", 0), ("running", 1), ("queued", 1), ("running", 2), ("succeeded", 2)], states
    # Resumed, not restarted: one loss point per step, the steps after the checkpoint not doubled.
    assert [s for s, _ in losses(base, alice, job)] == list(range(1, epochs * steps_per_epoch + 1))


def _name(worker: Process) -> str:
    """The worker's name as the job row shows it, up to the ``@host``."""
    return worker.log.stem + "@"

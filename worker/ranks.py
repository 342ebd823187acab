"""A job on several processes: its ranks started by torch's elastic launcher, rank 0's reports
relayed to the runner.

The runner's process is the launcher's agent: it starts ``config.nproc`` ranks (gloo on a CPU,
NCCL on CUDA, one GPU each) with :func:`cssl_core.distributed.launch`, as ``cssl pretrain
--nproc`` does, and keeps the job's heartbeat and its recorder. Rank 0 sends its progress,
checkpoints and evaluations through a queue, which the runner records in order as it records
one process's; rank 0 goes on past a checkpoint once it is recorded. The cancel flag, a warm
shutdown and the run-time limit reach rank 0 as an event it reads at each step, and every rank
stops at the same step (the training loop broadcasts rank 0's decision).

A rank that dies or hangs ends the launch: the agent watches the ranks every 0.1 s, and a
collective waits at most ``CSSL_COLLECTIVE_TIMEOUT`` seconds for a hung peer. The agent stops
the other ranks and :class:`~cssl_core.distributed.LaunchFailed` says the rank was lost; the
runner then gives the job back as it would after a worker loss. Each rank writes its pid to
``<job folder>/ranks/<rank>.pid`` while it runs, and ends itself when the runner's process is
gone, so that no rank outlives its worker.

A job on several nodes (``resources.nodes``) runs its ranks on that many workers at once, which
meet through torch's c10d rendezvous (:class:`cssl_core.distributed.Rendezvous`): the worker
that claimed the job is the first node, serves the rendezvous and holds rank 0; each of the
others runs the same ranks with no callbacks of its own (``worker.runner.join_job``). A node
that dies ends the others' collectives, and with them the attempt.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import shutil
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPORT_POLL_SECONDS = 0.1  # how often the runner looks at the cancel flag while no report arrives


@dataclass(frozen=True)
class RankRun:
    """What each rank needs to train the job: plain values, sent to the new processes."""

    method: str
    config: dict[str, Any]  # the run's keys (build_config's input)
    job_dir: Path
    resume_from: Path | None
    progress_every: int
    data: Path | None  # checked by the runner; None: the config's dataset is built in
    eval_name: str
    eval_data: Path | None
    max_decoded_bytes: int | None
    parent_pid: int
    node: int = 0  # of a job on several nodes: 0 on the worker that claimed it

    @property
    def pid_dir(self) -> Path:
        return self.job_dir / "ranks" / (f"node-{self.node}" if self.node else "")


def node_address(configured: str) -> str:
    """The address the other nodes reach this worker at: CSSL_NODE_ADDRESS, else the address of
    the host's default route (no packet is sent), else the one its name resolves to."""
    if configured.strip():
        return configured.strip()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: only the route is looked up
            return probe.getsockname()[0]
        except OSError:
            return socket.gethostbyname(socket.gethostname())


def load_datasets(config, data: Path | None, eval_name: str, eval_data: Path | None):
    """(dataset, eval_dataset) for ``pretrain``: read from the checked paths, not from the config
    (a resumed job's config may hold an older path); None where the core reads its own."""
    from cssl_core.data import FileIndex, dataset_image_size, load_eval_dataset, open_dataset

    dataset = None
    if data is not None:
        dataset = open_dataset(config.dataset, data, data_mode=config.data_mode, image_size=config.image_size)
    eval_dataset = (
        load_eval_dataset(
            eval_name,
            eval_data,
            image_size=dataset_image_size(config.dataset, config.image_size),
            streamed=isinstance(dataset, FileIndex),
        )
        if config.eval_dataset and eval_data is not None and config.knn_every
        else None
    )
    return dataset, eval_dataset


def run_ranks(
    run: RankRun,
    *,
    on_progress: Callable[[Any], None],
    should_stop: Callable[[], bool],
    on_checkpoint: Callable[[Any], None],
    on_evaluation: Callable[[Any], None],
    rendezvous=None,
):
    """Train ``run`` on ``config.nproc`` ranks and return rank 0's ``PretrainResult``; the
    callbacks are called here, in this process and thread, in the order rank 0 made them. An
    error of a callback (the database gone for too long, the job given to another attempt)
    stops the ranks at their next step and is raised once they have ended. With a
    ``rendezvous`` (a :class:`cssl_core.distributed.Rendezvous`) they are this node's ranks of a
    run on several; on a node other than the first, no callback is called and the result is
    that of this node's lowest rank."""
    from cssl_core import distributed
    from cssl_core.config import build_config

    nproc = build_config(run.method, run.config).nproc
    context = multiprocessing.get_context("spawn")
    reports, replies, stop = context.Queue(), context.Queue(), context.Event()
    relay = _Relay(on_progress, should_stop, on_checkpoint, on_evaluation, replies, stop)
    ended: dict[str, Any] = {}

    def launch() -> None:
        try:
            ended["result"] = distributed.launch(nproc, train_rank, run, reports, replies, stop, rendezvous=rendezvous)
        except BaseException as exc:  # raised below, in the runner's thread
            ended["error"] = exc

    # The agent runs in a thread of its own, so that it installs no signal handlers over the worker's.
    agent = threading.Thread(target=launch, name="ranks-agent", daemon=True)
    agent.start()
    try:
        while agent.is_alive():
            relay.check_stop()
            try:
                relay.handle(reports.get(timeout=REPORT_POLL_SECONDS))
            except queue.Empty:
                continue
        while True:  # what rank 0 sent before it ended
            try:
                relay.handle(reports.get_nowait())
            except queue.Empty:
                break
    finally:
        agent.join()
        shutil.rmtree(run.pid_dir, ignore_errors=True)
    if relay.error is not None:
        raise relay.error
    if "error" in ended:
        raise ended["error"]
    return ended["result"]


class _Relay:
    def __init__(self, on_progress, should_stop, on_checkpoint, on_evaluation, replies, stop):
        self.callbacks = {"progress": on_progress, "checkpoint": on_checkpoint, "evaluation": on_evaluation}
        self.should_stop, self.replies, self.stop = should_stop, replies, stop
        self.error: BaseException | None = None

    def check_stop(self) -> None:
        if self.stop.is_set():
            return
        try:
            if self.should_stop():
                self.stop.set()
        except BaseException as exc:  # the job was given to another attempt
            self._failed(exc)

    def handle(self, report: tuple[str, Any]) -> None:
        kind, payload = report
        try:
            if self.error is None:
                self.callbacks[kind](payload)
        except BaseException as exc:
            self._failed(exc)
        finally:
            if kind == "checkpoint":
                self.replies.put(self.error is None)  # rank 0 waits for it

    def _failed(self, exc: BaseException) -> None:
        self.error = exc
        self.stop.set()


def train_rank(run: RankRun, reports, replies, stop):
    """One rank of the job (in a process the launcher started): rank 0 reports through
    ``reports`` and reads ``stop``; the others only train (``pretrain`` gives them no callbacks)."""
    from cssl_core import distributed
    from cssl_core.config import build_config
    from cssl_core.data import decoded_bytes_limit
    from cssl_core.train import pretrain

    run.pid_dir.mkdir(parents=True, exist_ok=True)
    (run.pid_dir / f"{distributed.env_rank()}.pid").write_text(str(os.getpid()))
    threading.Thread(target=_exit_with_parent, args=(run.parent_pid,), name="parent-watch", daemon=True).start()

    def on_checkpoint(info) -> None:
        reports.put(("checkpoint", info))
        replies.get()  # recorded (or the runner gave up on it and set ``stop``)

    config = build_config(run.method, run.config)
    with decoded_bytes_limit(run.max_decoded_bytes, "CSSL_MAX_DECODED_BYTES"):
        dataset, eval_dataset = load_datasets(config, run.data, run.eval_name, run.eval_data)
        return pretrain(
            config,
            run.job_dir,
            on_progress=lambda progress: reports.put(("progress", progress)),
            should_stop=stop.is_set,
            on_checkpoint=on_checkpoint,
            on_evaluation=lambda result: reports.put(("evaluation", result)),
            resume_from=run.resume_from,
            progress_every=run.progress_every,
            dataset=dataset,
            eval_dataset=eval_dataset,
        )


def _exit_with_parent(parent_pid: int) -> None:
    """A worker killed outright leaves its ranks to init: they end rather than train on unseen."""
    while os.getppid() == parent_pid:
        time.sleep(0.5)
    os._exit(1)

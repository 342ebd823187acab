"""Several processes, one run: the process group, and the collectives a loss or a norm asks for.

A process learns its place from the environment ``torchrun`` (or
``torch.distributed.launcher.api.elastic_launch``) sets: ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. Without a process group every helper
answers as the one process of a run of one (rank 0 of 1, gathers and sums return their input),
so a loss reads the same with one process as with many.

The run keeps the 1-process numbers: ``batch_size`` is the global batch, each rank takes a
contiguous slice of it, BatchNorm normalises over the global batch
(:class:`cssl_core.backbones.norm.GlobalBatchNorm`) and gradients are averaged over ranks
(:func:`average_gradients`). Each rank's loss is a function whose mean over ranks is the
1-process loss (a mean over its own anchors, or the global loss itself); the autograd-aware
gather and sum route every rank's part of the gradient back to the rank that made the input.
"""

from __future__ import annotations

import math
import os
import socket
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn

from cssl_core.errors import CsslError

# No collective waits longer: a rank that died or hangs fails the others after this long.
# Rank 0's kNN evaluation and checkpoint writes happen while the others wait at a barrier, so
# the default leaves room for them; CSSL_COLLECTIVE_TIMEOUT (seconds) sets another.
DEFAULT_COLLECTIVE_TIMEOUT = timedelta(minutes=30)


def collective_timeout() -> timedelta:
    """How long a collective waits for the other ranks: CSSL_COLLECTIVE_TIMEOUT seconds, else 30 minutes."""
    value = os.environ.get("CSSL_COLLECTIVE_TIMEOUT", "").strip()
    if not value:
        return DEFAULT_COLLECTIVE_TIMEOUT
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise CsslError(f"CSSL_COLLECTIVE_TIMEOUT must be a number of seconds greater than 0, got {value!r}")
    return timedelta(seconds=seconds)


def env_world_size() -> int:
    """WORLD_SIZE from the environment a launcher sets; 1 when none did."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_rank() -> int:
    """RANK from the environment a launcher sets; 0 when none did."""
    return int(os.environ.get("RANK", "0"))


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def init_from_env(device_type: str) -> bool:
    """Join the process group the environment describes (gloo on a CPU, NCCL on CUDA); True when
    this call created it (the caller then tears it down), False when there is none to join or
    it exists already."""
    if is_initialized() or env_world_size() <= 1:
        return False
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend, timeout=collective_timeout())
    return True


def teardown() -> None:
    if is_initialized():
        dist.destroy_process_group()


def gather(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's ``tensor`` (N, ...) concatenated in rank order: (world * N, ...), with
    gradients (the backward sums each rank's gradient for this rank's rows)."""
    if world_size() == 1:
        return tensor
    with warnings.catch_warnings():
        # torch 2.9+ marks it deprecated in favour of a private module; it is the public autograd gather.
        warnings.simplefilter("ignore", FutureWarning)
        return torch.cat(dist_nn.all_gather(tensor), dim=0)


@torch.no_grad()
def gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """:func:`gather` without gradients (keys for a queue, targets)."""
    if world_size() == 1:
        return tensor
    tensor = tensor.contiguous()
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor)
    return torch.cat(parts, dim=0)


def global_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over ranks, with gradients (the backward sums the gradients too)."""
    if world_size() == 1:
        return tensor
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # as in gather()
        return dist_nn.all_reduce(tensor)


@torch.no_grad()
def mean_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """The mean over ranks of ``tensor``, no gradient (a reported loss, a centre's update)."""
    if world_size() == 1:
        return tensor
    tensor = tensor.clone()
    dist.all_reduce(tensor)
    return tensor.div_(world_size())


@torch.no_grad()
def log_mean_exp_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """``log(mean over ranks of exp(tensor))``, no gradient: a log-mean-exp over the global batch
    from each rank's log-mean-exp over its equal share (NCE's log Z)."""
    if world_size() == 1:
        return tensor
    return torch.logsumexp(gather_no_grad(tensor[None]), dim=0) - math.log(world_size())


@torch.no_grad()
def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """Set each gradient to its mean over ranks, in one flat all-reduce. A parameter that got no
    gradient on any rank keeps none (the optimiser then skips it, as in one process)."""
    if world_size() == 1 or not params:
        return
    device = params[0].device
    has_grad = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device)
    dist.all_reduce(has_grad)
    live = [p for p, n in zip(params, has_grad.tolist(), strict=True) if n > 0]
    if not live:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in live]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat.div_(world_size())
    offset = 0
    for p in live:
        mean = flat[offset : offset + p.numel()].view_as(p)
        if p.grad is None:
            p.grad = mean.clone()
        else:
            p.grad.copy_(mean)  # keeps the gradient's memory format
        offset += p.numel()


def broadcast_from_rank0(values: list[float]) -> list[float]:
    """Rank 0's ``values`` on every rank: decisions that must agree (stop now, elapsed time)."""
    if world_size() == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.broadcast(tensor, src=0)
    return tensor.tolist()


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Rendezvous:
    """Where the nodes of a run on several hosts meet: torch's c10d rendezvous, served by the
    first node at ``endpoint`` (host:port), under ``run_id``. ``first``: this is that node, whose
    rank 0 is the run's rank 0. ``address``: this node's own address, the one the others reach it
    by. ``timeout``: seconds to wait for all ``nodes`` to come."""

    nodes: int
    endpoint: str
    run_id: str
    first: bool
    address: str
    timeout: float


class LaunchFailed(CsslError):
    """A process of a launched run failed, and the launcher stopped the others. ``lost``: a rank
    was killed by a signal or a collective failed (a peer died or hung past
    :func:`collective_timeout`), rather than a rank raising an error of its own; trying again
    from the last checkpoint may well succeed."""

    def __init__(self, message: str, lost: bool):
        super().__init__(message)
        self.lost = lost


# What a rank raises when a collective loses its peers (gloo's and NCCL's words, and c10d's types).
_COLLECTIVE_FAILURES = (
    "Timed out waiting",
    "Connection closed by peer",
    "Connection reset by peer",
    "DistBackendError",
    "DistNetworkError",
    "NCCL communicator was aborted",
    "Watchdog caught collective operation timeout",
)


def launch(nproc: int, entrypoint: Callable[..., Any], *args: Any, rendezvous: Rendezvous | None = None) -> Any:
    """Run ``entrypoint(*args)`` on ``nproc`` local processes with torch's elastic launcher (the
    machinery of ``torchrun``), which sets each one's RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR
    and MASTER_PORT; return this node's lowest rank's result (rank 0's on the first node). A rank
    that raises or dies ends them all (the agent watches them every 0.1 s), and its error becomes
    a :class:`LaunchFailed` naming the rank.

    With a ``rendezvous`` the run spans ``rendezvous.nodes`` hosts of ``nproc`` processes each, as
    ``torchrun --nnodes`` does: each host calls this, and the launcher starts the processes once
    all of them have met (or raises :class:`LaunchFailed` when they do not within its timeout)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # As torchrun does: the cores shared out, not every process using all of them.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    if rendezvous is None:
        nodes, run_id, backend, endpoint = 1, f"cssl-{uuid.uuid4().hex[:8]}", "static", f"127.0.0.1:{free_port()}"
        rdzv_configs: dict[str, Any] = {"rank": 0}
        local_addr = None
    else:
        nodes, run_id, backend, endpoint = rendezvous.nodes, rendezvous.run_id, "c10d", rendezvous.endpoint
        rdzv_configs = {"join_timeout": rendezvous.timeout, "is_host": rendezvous.first}
        local_addr = rendezvous.address
        args = (rendezvous.first, entrypoint, *args)
        entrypoint = _first_node_first
    config = LaunchConfig(
        min_nodes=nodes,
        max_nodes=nodes,
        nproc_per_node=nproc,
        run_id=run_id,
        rdzv_backend=backend,
        rdzv_endpoint=endpoint,
        rdzv_configs=rdzv_configs,
        max_restarts=0,
        monitor_interval=0.1,
        start_method="spawn",
        local_addr=local_addr,
    )
    try:
        results = elastic_launch(config, entrypoint)(*args)
    except ChildFailedError as exc:
        failed = sorted(exc.failures.items())
        messages = [(r, _failure_message(f)) for r, f in failed]
        lost = any(f.exitcode < 0 for _, f in failed) or any(
            marker in message for _, message in messages for marker in _COLLECTIVE_FAILURES
        )
        lines = [f"rank {r}: {message}" for r, message in messages]
        raise LaunchFailed(f"a process of the run failed ({'; '.join(lines)})", lost) from None
    except RendezvousError as exc:
        # A node that did not come (or the first node gone): trying again may find them all.
        assert rendezvous is not None
        text = str(exc).strip()
        reason = type(exc).__name__ + (f": {text.splitlines()[0]}" if text and text != type(exc).__name__ else "")
        raise LaunchFailed(
            f"the {rendezvous.nodes} nodes of the run did not all meet at {rendezvous.endpoint} within "
            f"{rendezvous.timeout:g} s ({reason})",
            lost=True,
        ) from None
    return results[min(results)]


def _first_node_first(first: bool, entrypoint: Callable[..., Any], *args: Any) -> Any:
    """One process of a run on several nodes. c10d's rendezvous numbers the nodes in the order of
    their addresses, whichever served it; the run's first node must hold ranks 0..nproc-1 (its rank
    0 reports and writes the checkpoints), so every process shifts its RANK by that node's number,
    which the first node's local rank 0 posts in the launcher's store."""
    per_node, world = int(os.environ["LOCAL_WORLD_SIZE"]), env_world_size()
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False, timeout=collective_timeout()
    )
    key = f"cssl/first_node/{os.environ.get('TORCHELASTIC_RUN_ID', '')}"
    if first and local_rank() == 0:
        store.set(key, os.environ["GROUP_RANK"])
    first_group = int(store.get(key))
    os.environ["RANK"] = str((env_rank() - first_group * per_node) % world)
    os.environ["GROUP_RANK"] = str((int(os.environ["GROUP_RANK"]) - first_group) % (world // per_node))
    del store
    return entrypoint(*args)


def _failure_message(failure: Any) -> str:
    message = failure.message
    if isinstance(message, dict):  # the error file's record: {"message": ..., "extraInfo": {...}}
        message = message.get("message", message)
    text = str(message or f"exit code {failure.exitcode}").strip()
    return text.splitlines()[-1] if text else f"exit code {failure.exitcode}"

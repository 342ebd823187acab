"""Which queue a job goes to, and which queues a worker takes: what a job asks for (its
``resources``) against what a worker offers (``cssl worker --queues --devices --memory-gib``).

The rule, with ``Q`` the service's queue (CSSL_QUEUE):

- A job without resources goes to ``Q``, as it always has; a worker started without
  ``--queues`` (or with ``default`` among them) takes it.
- A job's *kind* is its device, ``cpu`` or ``gpu``, followed by ``-<pool>`` when it names a
  pool: ``gpu-a100``. A GPU job goes to ``Q.<kind>.<devices>`` (``cssl.gpu.2``), a CPU job to
  ``Q.<kind>`` (``cssl.cpu``): GPUs are counted, a CPU job's processes fit any CPU host.
- A worker that offers kind ``K`` with N GPUs takes ``Q.K.1`` ... ``Q.K.N``: every job that
  needs no more GPUs than it has, and none that needs more.
- Memory is not in the queue's name: a job's ``memory_gib`` is matched against the workers'
  offers when the API says why a job waits. A worker that states no memory is taken to have enough.

Nothing here reads the database or the broker.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

DEVICES = ("cpu", "gpu")
# The queue kind of jobs without resources.
DEFAULT = "default"
POOL_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,31}$"
KIND_PATTERN = re.compile(r"(cpu|gpu)(?:-([a-z0-9][a-z0-9_-]{0,31}))?")
# Queues one worker may take per kind: Redis polls each queue's ten priority levels.
MAX_DEVICES = 16


@dataclass(frozen=True)
class Resources:
    """What a job asks for, as its row stores it."""

    device: str
    devices: int = 1
    nodes: int = 1
    memory_gib: float | None = None
    pool: str | None = None

    @property
    def kind(self) -> str:
        return self.device + (f"-{self.pool}" if self.pool else "")

    @classmethod
    def from_stored(cls, stored: Mapping[str, Any] | None) -> Resources | None:
        return cls(**stored) if stored else None

    def stored(self) -> dict[str, Any]:
        out = {"device": self.device, "devices": self.devices, "nodes": self.nodes}
        if self.memory_gib is not None:
            out["memory_gib"] = self.memory_gib
        if self.pool is not None:
            out["pool"] = self.pool
        return out


@dataclass(frozen=True)
class Offer:
    """What a worker offers: the kinds it serves (``default``, ``cpu``, ``gpu``, ``gpu-a100``),
    its GPUs' ids, and its memory in GiB (None: not stated)."""

    kinds: tuple[str, ...] = (DEFAULT,)
    devices: tuple[str, ...] = ()
    memory_gib: float | None = None

    @classmethod
    def parse(cls, queues: str, devices: str = "", memory_gib: float | None = None) -> Offer:
        """From the worker's flags (comma-separated); raises ValueError saying what is wrong."""
        kinds = tuple(dict.fromkeys(part.strip() for part in queues.split(",") if part.strip())) or (DEFAULT,)
        for kind in kinds:
            if kind != DEFAULT and not KIND_PATTERN.fullmatch(kind):
                raise ValueError(
                    f"queue {kind!r} is not one of default, cpu, gpu, cpu-<pool> or gpu-<pool> "
                    "(a pool: lower-case letters, digits, _ and -, e.g. gpu-a100)"
                )
        ids = tuple(part.strip() for part in devices.split(",") if part.strip())
        if len(set(ids)) != len(ids) or not all(part.isdigit() for part in ids):
            raise ValueError(f"devices must be distinct GPU indices separated by ',' (e.g. 0,1), got {devices!r}")
        if len(ids) > MAX_DEVICES:
            raise ValueError(f"at most {MAX_DEVICES} devices per worker, got {len(ids)}")
        if any(kind.startswith("gpu") for kind in kinds) and not ids:
            raise ValueError("a worker that takes GPU jobs needs its GPUs' indices, e.g. --devices 0,1")
        if memory_gib is not None and memory_gib <= 0:
            memory_gib = None
        return cls(kinds, ids, memory_gib)

    def stored(self) -> dict[str, Any]:
        return {"queues": list(self.kinds), "devices": list(self.devices), "memory_gib": self.memory_gib}


def job_queue(base: str, resources: Resources | None) -> str:
    if resources is None:
        return base
    if resources.device == "cpu":
        return f"{base}.{resources.kind}"
    return f"{base}.{resources.kind}.{resources.devices}"


def worker_queues(base: str, offer: Offer) -> list[str]:
    """The queues a worker consumes, in the order it polls them."""
    queues = []
    for kind in offer.kinds:
        if kind == DEFAULT:
            queues.append(base)
        elif kind.startswith("cpu"):
            queues.append(f"{base}.{kind}")
        else:
            queues.extend(f"{base}.{kind}.{count}" for count in range(1, len(offer.devices) + 1))
    return queues


def fits(offer: Offer, resources: Resources | None) -> bool:
    """Whether a worker with this offer takes the job."""
    if resources is None:
        return DEFAULT in offer.kinds
    if resources.kind not in offer.kinds:
        return False
    if resources.device == "gpu" and resources.devices > len(offer.devices):
        return False
    return not (resources.memory_gib and offer.memory_gib and resources.memory_gib > offer.memory_gib)


def describe(resources: Resources | None) -> str:
    """``a worker with 4 GPUs in pool a100 and 80 GiB of memory``; for a job on several nodes,
    ``2 workers with ...``."""
    if resources is None:
        return "a worker that takes jobs without resources (started without --queues, or with default among them)"
    workers = "a worker" if resources.nodes == 1 else f"{resources.nodes} workers"
    if resources.device == "gpu":
        text = f"{workers} with {resources.devices} GPU{'s' if resources.devices > 1 else ''}"
    else:
        text = "a CPU worker" if resources.nodes == 1 else f"{resources.nodes} CPU workers"
    if resources.pool:
        text += f" in pool {resources.pool}"
    if resources.memory_gib:
        text += f" {'and' if ' with ' in text else 'with'} {resources.memory_gib:g} GiB of memory"
    return text


def waiting_reason(resources: Resources | None, live: Iterable[Offer]) -> str | None:
    """Why a queued job cannot start: fewer live workers fit it than it needs at once (its
    ``nodes``, else one). None when enough do (the job waits its turn, or workers are about to
    take it)."""
    live = list(live)
    needed = resources.nodes if resources is not None else 1
    fitting = sum(fits(offer, resources) for offer in live)
    if fitting >= needed:
        return None
    if not live:
        running = "no worker is running"
    elif fitting:
        running = f"{fitting} of the {len(live)} running workers fit{'s' if fitting == 1 else ''}"
    else:
        running = f"none of the {len(live)} running workers fits"
    return f"waiting for {describe(resources)}; {running}"

"""Reading a Server-Sent Events stream, such as ``GET /v1/jobs/{id}/events``: the CLI, the tests
and the benchmarks follow a job through it."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator


def parse_events(lines: Iterable[str]) -> Iterator[dict]:
    """``{"id", "event", "data"}`` for each event in a stream's lines, once its closing blank line
    has come: ``id`` an int or None, ``data`` the decoded JSON. Comments (the keep-alives) and
    blocks without an ``event`` field are passed over."""
    current: dict[str, str] = {}
    for line in lines:
        if line.startswith(":"):
            continue
        if line == "":
            if "event" in current:
                yield {
                    "id": int(current["id"]) if "id" in current else None,
                    "event": current["event"],
                    "data": json.loads(current.get("data", "{}")),
                }
            current = {}
            continue
        field, _, value = line.partition(":")
        current[field] = value.removeprefix(" ")

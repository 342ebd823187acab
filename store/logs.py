"""The service's log lines: text for people, or one JSON object per line for a log stack to index
(``CSSL_LOG_FORMAT=json``), each line of a job's work carrying the job's id, attempt, rank and
worker.

A worker process runs one job at a time (the solo pool runs it in the worker itself, the prefork
pool in a child process of its own), so the job a line belongs to is the process's current job,
which threads of that job (its heartbeat) share.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FORMATS = ("text", "json")

_current_job: dict[str, Any] = {}


@contextmanager
def job_context(job: str, attempt: int, worker: str) -> Iterator[None]:
    """Lines logged in this process until the block ends belong to ``job``."""
    _current_job.update(job=job, attempt=attempt, worker=worker, rank=int(os.environ.get("RANK", "0")))
    try:
        yield
    finally:
        _current_job.clear()


class JsonFormatter(logging.Formatter):
    """A record as one JSON object: time (UTC, ISO 8601), level, logger, message, the current
    job's fields, and the exception's traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_current_job,
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def formatter(log_format: str) -> logging.Formatter:
    if log_format not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {log_format!r}")
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def configure(log_format: str, level: int | str = logging.INFO) -> None:
    """The root logger writes to stderr in ``log_format``; Python's warnings go through it too,
    so that a JSON log holds JSON lines only."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)


def uvicorn_json_log_config() -> dict[str, Any]:
    """uvicorn's ``log_config`` for JSON lines: its own loggers (access lines included) and the root one."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "store.logs.JsonFormatter"}},
        "handlers": {"default": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"level": "INFO"},
            "uvicorn.access": {"handlers": ["default"], "level": "INFO", "propagate": False},
        },
        "root": {"handlers": ["default"], "level": "INFO"},
    }

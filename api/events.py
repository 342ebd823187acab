"""Server-Sent Events for one job, read from the job_events table.

Polling the table works the same whichever process (worker, API, sweeper) wrote the event.
The SSE id is the event's number within its job (1, 2, 3, ...; see ``records.add_event``):
numbers become visible in order, so a client that resumes with ``Last-Event-ID: n`` gets
every later event exactly once, from whichever API process it reconnects to.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

from fastapi import Request
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from store import jobs, records
from store.models import TERMINAL_STATUSES

POLL_SECONDS = 0.5
KEEPALIVE_SECONDS = 15.0


def format_event(event_id: int, event_type: str, data: dict) -> str:
    return f"id: {event_id}\nevent: {event_type}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _poll(sessions: sessionmaker[Session], job_id: str, after: int) -> tuple[list[tuple[int, str, dict]], bool]:
    with sessions() as session:
        # Status first: an event written after this read is picked up by the next poll.
        job = jobs.get_job(session, job_id)
        finished = job is None or job.status in TERMINAL_STATUSES
        events = [
            (e.seq, e.type, {**e.data, "job_id": job_id, "at": e.created_at.isoformat()})
            for e in records.events_after(session, job_id, after)
        ]
    return events, finished


async def stream(request: Request, sessions: sessionmaker[Session], job_id: str, after: int) -> AsyncIterator[str]:
    """Replays the events after ``after``, follows new ones, and ends with an ``end`` event
    once the job has finished."""
    yield f"retry: {int(POLL_SECONDS * 2000)}\n\n"
    last_sent = time.monotonic()
    while True:
        events, finished = await run_in_threadpool(_poll, sessions, job_id, after)
        for event_id, event_type, data in events:
            after = event_id
            yield format_event(event_id, event_type, data)
            last_sent = time.monotonic()
        if finished and len(events) < 500:
            yield f"event: end\ndata: {json.dumps({'job_id': job_id})}\n\n"
            return
        if await request.is_disconnected():
            return
        if time.monotonic() - last_sent > KEEPALIVE_SECONDS:
            yield ": keep-alive\n\n"
            last_sent = time.monotonic()
        await asyncio.sleep(POLL_SECONDS)

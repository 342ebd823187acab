"""Submissions per owner: a token bucket in the API process.

An owner's bucket holds up to ``CSSL_SUBMIT_BURST`` submissions and refills at
``CSSL_SUBMIT_RATE`` a minute; a submission that finds it empty is a 429 whose ``Retry-After``
says when the next one will be there. The buckets live in this process, so N API processes let
an owner submit N times the rate.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from fastapi import Request

from api.deps import CurrentOwner
from api.problems import ProblemError, problem
from store.settings import Settings

TOO_MANY = problem(
    "Too many submissions for this owner; retry after `Retry-After` seconds",
    {"Retry-After": {"description": "Seconds until a submission will be accepted", "required": True,
                     "schema": {"type": "integer", "minimum": 1}}},
)


class TokenBucket:
    """``burst`` tokens per key, refilled at ``per_minute``; one taken per submission."""

    def __init__(self, per_minute: float, burst: int, *, clock: Callable[[], float] = time.monotonic, size: int = 10_000):
        self.per_second, self.burst, self.clock, self.size = per_minute / 60.0, burst, clock, size
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, when counted)

    @classmethod
    def from_settings(cls, settings: Settings) -> "TokenBucket | None":
        return cls(settings.submit_rate, settings.submit_burst) if settings.submit_rate > 0 else None

    def take(self, key: str) -> float:
        """Takes a token for ``key``: 0 when there was one, else the seconds until there is."""
        now = self.clock()
        tokens, then = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.per_second)
        if tokens >= 1:
            self._remember(key, tokens - 1, now)
            return 0.0
        self._remember(key, tokens, now)
        return (1 - tokens) / self.per_second

    def _remember(self, key: str, tokens: float, now: float) -> None:
        if key not in self._buckets and len(self._buckets) >= self.size:
            # A bucket that has refilled is the same as none.
            full_after = self.burst / self.per_second
            self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < full_after}
        self._buckets[key] = (tokens, now)


async def limit_submissions(request: Request, owner: CurrentOwner) -> None:
    """A route dependency: 429 once the owner's bucket is empty. Async, so that it runs on the
    event loop's one thread and needs no lock."""
    bucket: TokenBucket | None = request.app.state.submit_bucket
    if bucket is None:
        return
    wait = bucket.take(owner)
    if wait > 0:
        seconds = max(1, math.ceil(wait))
        settings: Settings = request.app.state.settings
        raise ProblemError(
            429,
            f"too many submissions: each owner may submit {settings.submit_burst} jobs at once and "
            f"{settings.submit_rate:g} a minute; retry in {seconds} s",
            title="Too many submissions",
            headers={"Retry-After": str(seconds)},
            retry_after=seconds,
        )

"""Limits on what one owner, or one client address, may do, shared by every API process.

The counters live in Redis (``CSSL_LIMITS_URL``, by default the broker's Redis), so N API
processes share one budget; the embedded service, which has no Redis, keeps them in its own
memory. Each refusal is a 429 problem document whose ``limit`` names the setting and, where
waiting helps, whose ``Retry-After`` says how long.

- Submissions and uploads per owner (``CSSL_SUBMIT_RATE`` a minute, ``CSSL_SUBMIT_BURST`` at
  once): at most BURST in any moving window of BURST / RATE minutes.
- Unknown or revoked tokens per client address (``CSSL_AUTH_FAILURES_PER_MINUTE``).
- Event streams an owner holds open at once (``CSSL_MAX_EVENT_STREAMS``): each open stream holds
  a slot that it renews while it lasts, so the slots of a process that died expire.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import AsyncIterator

import redis
from fastapi import Request
from limits import RateLimitItemPerSecond
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from api.deps import CurrentOwner
from api.problems import ProblemError, problem
from store.settings import Settings

TOO_MANY = problem(
    "Over a limit of this owner or client address; `limit` names the setting, `Retry-After` says when to retry",
    {
        "Retry-After": {
            "description": "Seconds until the limit lets a request through",
            "required": False,
            "schema": {"type": "integer", "minimum": 1},
        }
    },
)
# An open stream renews its slot this often; a slot not renewed for STREAM_SLOT_TTL is free.
STREAM_SLOT_RENEW = 15.0
STREAM_SLOT_TTL = 60.0


def too_many(limit: str, detail: str, retry_after: int | None = None, title: str = "Too many requests") -> ProblemError:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    extra = {"retry_after": retry_after} if retry_after is not None else {}
    return ProblemError(429, detail, title=title, headers=headers, limit=limit, **extra)


def limits_url(settings: Settings) -> str:
    if settings.limits_url:
        return settings.limits_url
    return settings.broker_url if settings.broker_url.startswith(("redis://", "rediss://")) else "memory://"


class Limits:
    """The service's rate limits and stream slots, keyed under the queue's name so that two
    services on one Redis keep apart."""

    def __init__(self, settings: Settings):
        self.settings = settings
        url = limits_url(settings)
        self.limiter = MovingWindowRateLimiter(storage_from_string(url))
        self.namespace = f"cssl:{settings.queue}"
        self.streams = (
            (RedisStreamSlots(url, self.namespace) if url.startswith("redis") else MemoryStreamSlots())
            if settings.max_event_streams
            else None
        )
        self.submissions = None
        if settings.submit_rate > 0:
            window = max(1, math.ceil(settings.submit_burst * 60 / settings.submit_rate))
            self.submissions = RateLimitItemPerSecond(settings.submit_burst, window)
        self.auth_failures = (
            RateLimitItemPerSecond(settings.auth_failures_per_minute, 60) if settings.auth_failures_per_minute else None
        )

    def _retry_after(self, item: RateLimitItemPerSecond, *key: str) -> int:
        reset = self.limiter.get_window_stats(item, self.namespace, *key).reset_time
        return max(1, math.ceil(reset - time.time()))

    def take_submission(self, owner: str) -> None:
        """Counts a submission of ``owner``'s; a 429 when the window holds the burst already."""
        if self.submissions is None or self.limiter.hit(self.submissions, self.namespace, "submit", owner):
            return
        seconds = self._retry_after(self.submissions, "submit", owner)
        s = self.settings
        raise too_many(
            "CSSL_SUBMIT_RATE",
            f"too many submissions: each owner may submit {s.submit_burst} jobs or uploads at once and "
            f"{s.submit_rate:g} a minute (CSSL_SUBMIT_BURST, CSSL_SUBMIT_RATE); retry in {seconds} s",
            seconds,
            title="Too many submissions",
        )

    def check_auth_failures(self, address: str) -> None:
        """A 429 while ``address`` is over its failed authentications."""
        if self.auth_failures is None or self.limiter.test(self.auth_failures, self.namespace, "auth", address):
            return
        seconds = self._retry_after(self.auth_failures, "auth", address)
        raise too_many(
            "CSSL_AUTH_FAILURES_PER_MINUTE",
            f"too many unknown or revoked tokens from this address: at most {self.settings.auth_failures_per_minute} "
            f"a minute (CSSL_AUTH_FAILURES_PER_MINUTE); retry in {seconds} s with a valid token",
            seconds,
            title="Too many failed authentications",
        )

    def count_auth_failure(self, address: str) -> None:
        if self.auth_failures is not None:
            self.limiter.hit(self.auth_failures, self.namespace, "auth", address)

    def open_stream(self, owner: str) -> StreamSlot | None:
        """A slot for one of ``owner``'s event streams; a 429 when all are taken."""
        if self.streams is None:
            return None
        slot = StreamSlot(self.streams, owner)
        if not self.streams.acquire(owner, slot.id, self.settings.max_event_streams):
            raise too_many(
                "CSSL_MAX_EVENT_STREAMS",
                f"too many event streams open: each owner may follow {self.settings.max_event_streams} at once "
                "(CSSL_MAX_EVENT_STREAMS); close one, or poll GET /v1/jobs/{job_id}",
                title="Too many event streams",
            )
        return slot


class StreamSlot:
    def __init__(self, slots: MemoryStreamSlots | RedisStreamSlots, owner: str):
        self.slots, self.owner, self.id = slots, owner, uuid.uuid4().hex
        self.renewed = time.monotonic()

    def renew_if_due(self) -> None:
        if time.monotonic() - self.renewed >= STREAM_SLOT_RENEW:
            self.slots.renew(self.owner, self.id)
            self.renewed = time.monotonic()

    def release(self) -> None:
        self.slots.release(self.owner, self.id)


class MemoryStreamSlots:
    """Slots in this process: the embedded service has one API process."""

    def __init__(self):
        self._lock = threading.Lock()
        self._slots: dict[str, dict[str, float]] = {}  # owner -> slot id -> expiry

    def acquire(self, owner: str, slot: str, most: int) -> bool:
        now = time.time()
        with self._lock:
            held = {k: v for k, v in self._slots.get(owner, {}).items() if v > now}
            if len(held) >= most:
                return False
            held[slot] = now + STREAM_SLOT_TTL
            self._slots[owner] = held
            return True

    def renew(self, owner: str, slot: str) -> None:
        with self._lock:
            if slot in self._slots.get(owner, {}):
                self._slots[owner][slot] = time.time() + STREAM_SLOT_TTL

    def release(self, owner: str, slot: str) -> None:
        with self._lock:
            self._slots.get(owner, {}).pop(slot, None)


# Drop the expired slots, then take one if fewer than ARGV[3] are held; atomic, so that two API
# processes cannot both take the last one.
_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""


class RedisStreamSlots:
    """Slots in a sorted set per owner, scored by when they expire."""

    def __init__(self, url: str, namespace: str):
        self.redis = redis.Redis.from_url(url)
        self.namespace = namespace
        self._acquire = self.redis.register_script(_ACQUIRE)

    def _key(self, owner: str) -> str:
        return f"{self.namespace}:streams:{owner}"

    def acquire(self, owner: str, slot: str, most: int) -> bool:
        now = time.time()
        ttl = int(STREAM_SLOT_TTL) + 1
        return bool(self._acquire(keys=[self._key(owner)], args=[now, now + STREAM_SLOT_TTL, most, slot, ttl]))

    def renew(self, owner: str, slot: str) -> None:
        self.redis.zadd(self._key(owner), {slot: time.time() + STREAM_SLOT_TTL}, xx=True)
        self.redis.expire(self._key(owner), int(STREAM_SLOT_TTL) + 1)

    def release(self, owner: str, slot: str) -> None:
        self.redis.zrem(self._key(owner), slot)


async def holding(slot: StreamSlot | None, stream: AsyncIterator[str]) -> AsyncIterator[str]:
    """``stream``, holding ``slot`` until it ends or the client goes away."""
    try:
        async for chunk in stream:
            if slot is not None:
                slot.renew_if_due()
            yield chunk
    finally:
        if slot is not None:
            slot.release()


def limit_submissions(request: Request, owner: CurrentOwner) -> None:
    """A route dependency: 429 once the owner's submissions fill the window."""
    request.app.state.limits.take_submission(owner)

"""Sending webhooks: a thread of each API process claims due messages from the outbox
(``store.webhooks``), posts them and records each attempt.

Messages are signed as Standard Webhooks (https://www.standardwebhooks.com/) say: headers
``webhook-id`` (the message's id, the same on every attempt, for the receiver to drop
duplicates), ``webhook-timestamp`` (unix seconds of this attempt) and ``webhook-signature``
(``v1,`` and the base64 HMAC-SHA256 of ``{id}.{timestamp}.{body}`` under the endpoint's secret).
A 2xx ends a message; anything else (redirects included: they are not followed) is tried again
after each of ``CSSL_WEBHOOK_RETRY_SECONDS`` in turn, then marked failed.

The outbox is in the database, so a process that stops or dies loses nothing: its claims lapse
and any API process sends them. The posts happen here, never in a worker, so a slow receiver
costs no training time. Delivery is at least once: a process that dies after the receiver
answered but before recording it sends the message again, with the same ``webhook-id``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import httpx

from store import webhooks
from store.db import is_transient, session_scope
from store.settings import Settings

log = logging.getLogger(__name__)

# Messages posted at once by one API process; a receiver that takes its whole timeout holds one.
SEND_THREADS = 8
PRIVATE_REFUSED = (
    "a loopback, private or link-local address, which the service does not post to (CSSL_WEBHOOK_ALLOW_PRIVATE is off)"
)


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header's value: ``v1,<base64 HMAC-SHA256>``, keyed by the
    bytes the secret's base64 (after ``whsec_``) encodes."""
    key = base64.b64decode(secret.removeprefix(webhooks.SECRET_PREFIX))
    digest = hmac.new(key, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(secret: str, message_id: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    timestamp = int(time.time()) if timestamp is None else timestamp
    return {
        "content-type": "application/json",
        "user-agent": "cssl-webhooks",
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, message_id, timestamp, body),
    }


def _refused(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


def literal_address_problem(url: str) -> str | None:
    """Why the service refuses ``url`` without looking its host up (an IP address that is not
    public, or localhost), or None."""
    host = urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return f"{host} is {PRIVATE_REFUSED}"
    try:
        return f"{host} is {PRIVATE_REFUSED}" if _refused(host) else None
    except ValueError:  # a name: looked up when sending
        return None


def address_problem(url: str) -> str | None:
    """Why the service refuses ``url``'s host once looked up, or None. The look-up and the
    connection are separate, so a name that changes its address in between (DNS rebinding)
    slips through; where that matters, send webhooks through an egress proxy that refuses them."""
    parts = urlsplit(url)
    try:
        found = socket.getaddrinfo(parts.hostname, parts.port or 443, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        return f"could not look up {parts.hostname}: {exc}"
    refused = sorted({info[4][0] for info in found if _refused(info[4][0])})
    return f"{parts.hostname} resolves to {', '.join(refused)}: {PRIVATE_REFUSED}" if refused else None


def deliver(client: httpx.Client, outgoing: webhooks.Outgoing, settings: Settings) -> tuple[int | None, str | None]:
    """One attempt: the receiver's status code, or None and why there was none."""
    if not settings.webhook_allow_private and (refused := address_problem(outgoing.url)):
        return None, refused
    body = json.dumps(outgoing.payload, separators=(",", ":")).encode()
    try:
        response = client.post(
            outgoing.url, content=body, headers=signed_headers(outgoing.secret, outgoing.message_id, body)
        )
    except httpx.TimeoutException:
        return None, f"no answer within {settings.webhook_timeout:g} s (CSSL_WEBHOOK_TIMEOUT)"
    except httpx.HTTPError as exc:
        return None, f"{type(exc).__name__}: {exc}"[:500]
    if 200 <= response.status_code < 300:
        return response.status_code, None
    if response.is_redirect:
        return response.status_code, "redirects are not followed; register the URL it redirects to"
    return response.status_code, f"not a 2xx: {response.status_code} {response.reason_phrase}"


def send_due(settings: Settings, client: httpx.Client, pool: ThreadPoolExecutor) -> int:
    """Claims up to SEND_THREADS due messages, posts them at once and records how each went;
    returns how many were sent."""
    hold = 2 * settings.webhook_timeout + 60  # longer than any attempt takes
    with session_scope(settings.database_url) as session:
        claimed = webhooks.claim_due(session, SEND_THREADS, hold)

    def attempt(outgoing: webhooks.Outgoing) -> None:
        started = time.monotonic()
        status_code, error = deliver(client, outgoing, settings)
        duration_ms = round((time.monotonic() - started) * 1000)
        with session_scope(settings.database_url) as session:
            status = webhooks.record_attempt(
                session,
                outgoing,
                status_code=status_code,
                error=error,
                duration_ms=duration_ms,
                retry_seconds=settings.webhook_retry_seconds,
            )
        # Neither the URL (it may hold a token of the receiver's) nor the body: ids only.
        level = logging.WARNING if status == "failed" else logging.INFO
        log.log(
            level,
            "webhook message %s to endpoint %s, attempt %d: %s; %s",
            outgoing.message_id,
            outgoing.webhook_id,
            outgoing.attempt,
            status_code or error,
            status or "gone",
        )

    for future in [pool.submit(attempt, outgoing) for outgoing in claimed]:
        future.result()
    return len(claimed)


class WebhookSender:
    """Runs :func:`send_due` every ``CSSL_WEBHOOK_INTERVAL`` seconds in a daemon thread (at once
    again while it finds a full batch), apart from the sweeper, so a slow receiver delays no sweep."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cssl-webhooks", daemon=True)
        # httpx logs each request's URL at INFO, and a receiver's URL may hold its token.
        logging.getLogger("httpx").setLevel(logging.WARNING)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        failing = False
        with (
            httpx.Client(timeout=self.settings.webhook_timeout, follow_redirects=False) as client,
            ThreadPoolExecutor(SEND_THREADS, thread_name_prefix="cssl-webhook-send") as pool,
        ):
            while not self._stop.is_set():
                sent = 0
                try:
                    sent = send_due(self.settings, client, pool)
                    failing = False
                except Exception as exc:
                    if not is_transient(exc):
                        log.exception("sending webhooks failed; trying again in %ss", self.settings.webhook_interval)
                    elif not failing:
                        log.warning("sending webhooks failed, the database is unreachable; trying again")
                    failing = True
                if sent < SEND_THREADS and self._stop.wait(self.settings.webhook_interval):
                    return

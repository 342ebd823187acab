"""Typed dependencies: settings, a database session per request, the caller's owner name.

The cheap ones are ``async`` so that a request hops to the thread pool once, for its route,
and not once per dependency.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.problems import ProblemError
from dispatch.publisher import Publisher
from store import tokens
from store.settings import Settings

bearer = HTTPBearer(auto_error=False, description="A token from `cssl token create --owner NAME`")


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_publisher(request: Request) -> Publisher:
    return request.app.state.publisher


async def get_session(request: Request) -> AsyncIterator[Session]:
    # Creating a session does no I/O; it connects on its first query, in the route's thread.
    session = request.app.state.sessions()
    try:
        yield session
    except BaseException:
        await run_in_threadpool(session.close)  # rolls back
        raise
    await run_in_threadpool(_commit_and_close, session)


def _commit_and_close(session: Session) -> None:
    with session:
        session.commit()


async def get_read_session(request: Request) -> AsyncIterator[Session]:
    # Autocommit: the queries run in the route's thread, and closing does no I/O.
    with request.app.state.read_sessions() as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_settings)]
PublisherDep = Annotated[Publisher, Depends(get_publisher)]
# Function scope: the commit happens before the response goes out, so a client that reads
# right after a write sees it.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
# For routes that only read.
ReadSessionDep = Annotated[Session, Depends(get_read_session, scope="function")]


class TokenCache:
    """Callers of recently seen tokens, so that most requests skip the token query, and tokens
    recently found unknown, so that a stream of bad tokens does not query the database each
    time. A revoked token keeps working for at most ``ttl`` seconds; an unknown token is not
    looked up again for ``miss_ttl`` seconds (a new token is random, so it was never one)."""

    def __init__(self, ttl: float = 30.0, size: int = 10_000, miss_ttl: float = 10.0):
        self.ttl, self.size, self.miss_ttl = ttl, size, miss_ttl
        self._callers: dict[str, tuple[tokens.Caller, float]] = {}
        self._misses: dict[str, float] = {}

    def get(self, token_hash: str) -> tokens.Caller | None:
        hit = self._callers.get(token_hash)
        if hit is None or hit[1] < time.monotonic():
            return None
        return hit[0]

    def put(self, token_hash: str, caller: tokens.Caller) -> None:
        if len(self._callers) >= self.size:
            self._callers.clear()
        self._callers[token_hash] = (caller, time.monotonic() + self.ttl)

    def known_unknown(self, token_hash: str) -> bool:
        expires = self._misses.get(token_hash)
        return expires is not None and expires >= time.monotonic()

    def put_unknown(self, token_hash: str) -> None:
        if len(self._misses) >= self.size:
            self._misses.clear()
        self._misses[token_hash] = time.monotonic() + self.miss_ttl


def _authenticate(request: Request, token: str, token_hash: str) -> tokens.Caller:
    """The token's caller, from the database unless it was found unknown a moment ago; counts
    each unknown token against the client's address and refuses an address over its limit."""
    cache: TokenCache = request.app.state.token_cache
    limits = request.app.state.limits
    address = request.client.host if request.client else "unknown"
    limits.check_auth_failures(address)
    caller = None
    if not cache.known_unknown(token_hash):
        with request.app.state.read_sessions() as session:
            caller = tokens.caller_for_token(session, token)
    if caller is None:
        cache.put_unknown(token_hash)
        limits.count_auth_failure(address)
        raise ProblemError(
            401,
            "the bearer token is unknown or revoked; create one with `cssl token create --owner NAME`",
            headers={"WWW-Authenticate": "Bearer"},
        )
    cache.put(token_hash, caller)
    return caller


async def current_caller(
    request: Request,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> tokens.Caller:
    if settings.auth_disabled:
        # The one user of a local embedded service is its operator.
        return tokens.Caller(settings.local_owner, admin=True)
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise ProblemError(
            401,
            "send `Authorization: Bearer <token>`; create a token with `cssl token create --owner NAME`",
            headers={"WWW-Authenticate": "Bearer"},
        )
    token_hash = tokens.hash_token(credentials.credentials)
    caller = request.app.state.token_cache.get(token_hash)
    if caller is None:
        caller = await run_in_threadpool(_authenticate, request, credentials.credentials, token_hash)
    return caller


async def current_owner(caller: Annotated[tokens.Caller, Depends(current_caller)]) -> str:
    return caller.owner


CurrentCaller = Annotated[tokens.Caller, Depends(current_caller)]
CurrentOwner = Annotated[str, Depends(current_owner)]

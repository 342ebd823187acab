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
from store import tokens
from store.settings import Settings
from dispatch.sweeper import Publisher

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
    """Owners of recently seen tokens, so that most requests skip the token query. A revoked
    token keeps working for at most ``ttl`` seconds."""

    def __init__(self, ttl: float = 30.0, size: int = 10_000):
        self.ttl, self.size = ttl, size
        self._owners: dict[str, tuple[str, float]] = {}

    def get(self, token_hash: str) -> str | None:
        hit = self._owners.get(token_hash)
        if hit is None or hit[1] < time.monotonic():
            return None
        return hit[0]

    def put(self, token_hash: str, owner: str) -> None:
        if len(self._owners) >= self.size:
            self._owners.clear()
        self._owners[token_hash] = (owner, time.monotonic() + self.ttl)


def _lookup_owner(request: Request, token: str) -> str | None:
    with request.app.state.read_sessions() as session:
        return tokens.owner_for_token(session, token)


async def current_owner(
    request: Request,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> str:
    if settings.auth_disabled:
        return settings.local_owner
    unauthorized = {"WWW-Authenticate": "Bearer"}
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise ProblemError(
            401,
            "send `Authorization: Bearer <token>`; create a token with `cssl token create --owner NAME`",
            headers=unauthorized,
        )
    cache: TokenCache = request.app.state.token_cache
    token_hash = tokens.hash_token(credentials.credentials)
    owner = cache.get(token_hash)
    if owner is None:
        owner = await run_in_threadpool(_lookup_owner, request, credentials.credentials)
        if owner is None:
            raise ProblemError(
                401, "the bearer token is unknown or revoked; create one with `cssl token create --owner NAME`", headers=unauthorized
            )
        cache.put(token_hash, owner)
    return owner


CurrentOwner = Annotated[str, Depends(current_owner)]

"""Typed dependencies: settings, a database session per request, the caller's owner name."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from api.problems import ProblemError
from store import tokens
from store.settings import Settings
from worker.sweeper import Publisher

bearer = HTTPBearer(auto_error=False, description="A token from `cssl token create --owner NAME`")


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_publisher(request: Request) -> Publisher:
    return request.app.state.publisher


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        yield session
        session.commit()


SettingsDep = Annotated[Settings, Depends(get_settings)]
PublisherDep = Annotated[Publisher, Depends(get_publisher)]
# Function scope: the commit happens before the response goes out, so a client that reads
# right after a write sees it.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def current_owner(
    settings: SettingsDep,
    session: SessionDep,
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
    owner = tokens.owner_for_token(session, credentials.credentials)
    if owner is None:
        raise ProblemError(401, "the bearer token is unknown or revoked; create one with `cssl token create --owner NAME`", headers=unauthorized)
    return owner


CurrentOwner = Annotated[str, Depends(current_owner)]

"""API tokens. Only the sha256 of a token is stored; the token itself is shown once."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from store.models import ApiToken

TOKEN_PREFIX = "cssl_"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(session: Session, owner: str) -> str:
    """A new token for ``owner``; returns the plain token, which is not stored."""
    if not owner or not owner.strip():
        raise ValueError("owner must be a non-empty name")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(owner=owner.strip(), token_hash=hash_token(token), prefix=token[:12]))
    session.flush()
    return token


def owner_for_token(session: Session, token: str) -> str | None:
    return session.scalar(
        select(ApiToken.owner).where(ApiToken.token_hash == hash_token(token), ApiToken.revoked_at.is_(None))
    )

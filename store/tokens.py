"""API tokens. Only the sha256 of a token is stored; the token itself is shown once."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from typing import NamedTuple

from sqlalchemy import select
from sqlalchemy.orm import Session

from store.models import ApiToken, utcnow

TOKEN_PREFIX = "cssl_"
PREFIX_LENGTH = 12  # the stored, shown part by which a token is listed and revoked


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Caller(NamedTuple):
    """Whom a token acts for: jobs belong to ``owner``; an ``admin`` may also raise priorities."""

    owner: str
    admin: bool = False


def create_token(session: Session, owner: str, *, admin: bool = False) -> str:
    """A new token for ``owner``; returns the plain token, which is not stored."""
    if not owner or not owner.strip():
        raise ValueError("owner must be a non-empty name")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(owner=owner.strip(), token_hash=hash_token(token), prefix=token[:PREFIX_LENGTH], admin=admin))
    session.flush()
    return token


def caller_for_token(session: Session, token: str) -> Caller | None:
    """The active token's owner and scope; None for an unknown or revoked token."""
    active = (ApiToken.token_hash == hash_token(token), ApiToken.revoked_at.is_(None))
    row = session.execute(select(ApiToken.owner, ApiToken.admin).where(*active)).first()
    return Caller(row.owner, bool(row.admin)) if row else None


def owner_for_token(session: Session, token: str) -> str | None:
    caller = caller_for_token(session, token)
    return caller.owner if caller else None


def list_tokens(session: Session, owner: str | None = None) -> Sequence[ApiToken]:
    """Tokens (their prefixes, never the tokens), oldest first, optionally of one owner."""
    query = select(ApiToken).order_by(ApiToken.id)
    if owner is not None:
        query = query.where(ApiToken.owner == owner.strip())
    return session.scalars(query).all()


def revoke_token(session: Session, token_or_prefix: str) -> ApiToken:
    """Revoke the one token whose prefix (as ``list_tokens`` shows it) or full value is given.

    Revoking a revoked token keeps its first revocation time. Raises ``LookupError`` when no
    token or more than one matches.
    """
    value = token_or_prefix.strip()
    if len(value) > PREFIX_LENGTH:
        matches = session.scalars(select(ApiToken).where(ApiToken.token_hash == hash_token(value))).all()
    else:
        matches = session.scalars(select(ApiToken).where(ApiToken.prefix == value)).all()
    if not matches:
        raise LookupError(f"no token matches {value!r}; `cssl token list` shows the prefixes")
    if len(matches) > 1:
        raise LookupError(f"{len(matches)} tokens have the prefix {value!r}; pass the whole token instead")
    token = matches[0]
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        session.flush()
    return token

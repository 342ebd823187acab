"""One settings object, read from the environment once per process.

With neither ``CSSL_DATABASE_URL`` nor ``CSSL_BROKER_URL`` set the service is *embedded*:
a SQLite file and Celery's file-system transport under ``CSSL_STATE_DIR`` (default
``./.state``), so ``cssl serve`` needs nothing else installed. In production both URLs point
at Postgres and Redis.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, replace
from pathlib import Path


class SettingsError(RuntimeError):
    """The environment describes a service that cannot be started; the message says why."""


@dataclass(frozen=True)
class Settings:
    state_dir: Path
    database_url: str
    broker_url: str
    artifact_root: Path
    # Off only when asked for explicitly, and only for an embedded (single-machine) service.
    auth_disabled: bool = False
    # The owner that every request acts as when authentication is off.
    local_owner: str = "local"
    queue: str = "cssl"
    # A running job whose heartbeat is older than this is taken as lost and re-queued.
    heartbeat_timeout: float = 60.0
    heartbeat_interval: float = 2.0
    # A queued job whose message was sent this long ago and not taken is published again.
    republish_after: float = 600.0
    sweep_interval: float = 10.0
    max_attempts: int = 3
    # How often a progress callback is written to the database (optimiser steps).
    progress_every: int = 10

    @property
    def embedded(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def queue_folder(self) -> Path:
        return self.state_dir / "queue"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Settings":
        env = dict(os.environ if env is None else env)
        state_dir = Path(env.get("CSSL_STATE_DIR", ".state")).resolve()
        database_url = env.get("CSSL_DATABASE_URL") or f"sqlite:///{state_dir / 'cssl.db'}"
        broker_url = env.get("CSSL_BROKER_URL") or "filesystem://"
        settings = cls(
            state_dir=state_dir,
            database_url=_sqlalchemy_url(database_url),
            broker_url=broker_url,
            artifact_root=Path(env.get("CSSL_ARTIFACT_ROOT") or state_dir / "artifacts").resolve(),
            auth_disabled=_flag(env, "CSSL_AUTH_DISABLED"),
            local_owner=env.get("CSSL_LOCAL_OWNER", "local"),
            queue=env.get("CSSL_QUEUE", "cssl"),
            heartbeat_timeout=_number(env, "CSSL_HEARTBEAT_TIMEOUT", 60.0),
            heartbeat_interval=_number(env, "CSSL_HEARTBEAT_INTERVAL", 2.0),
            republish_after=_number(env, "CSSL_REPUBLISH_AFTER", 600.0),
            sweep_interval=_number(env, "CSSL_SWEEP_INTERVAL", 10.0),
            max_attempts=int(_number(env, "CSSL_MAX_ATTEMPTS", 3)),
            progress_every=int(_number(env, "CSSL_PROGRESS_EVERY", 10)),
        )
        settings.check()
        return settings

    def check(self) -> None:
        if self.auth_disabled and not self.embedded:
            raise SettingsError(
                "CSSL_AUTH_DISABLED is set but the database is not the embedded SQLite file: "
                "authentication can be switched off only for a local embedded service"
            )
        if self.heartbeat_interval >= self.heartbeat_timeout:
            raise SettingsError("CSSL_HEARTBEAT_INTERVAL must be shorter than CSSL_HEARTBEAT_TIMEOUT")

    def with_(self, **changes) -> "Settings":
        return replace(self, **changes)


@functools.cache
def get_settings() -> Settings:
    return Settings.from_env()


def _sqlalchemy_url(url: str) -> str:
    # Users write the URL psql understands; SQLAlchemy needs to be told to use psycopg 3.
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def _flag(env: dict[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _number(env: dict[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        return float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None

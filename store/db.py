"""Engines and sessions. SQLite (embedded) and Postgres differ here, and in how
``store/series.py`` reads a long metric series."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from sqlalchemy import create_engine, event, make_url, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)
T = TypeVar("T")

# Seconds a new Postgres connection may take before it fails: a server that is gone without
# closing its sockets (a fail-over, a dropped network) costs this, not the TCP timeout. The
# URL's own ``?connect_timeout=N`` wins.
CONNECT_TIMEOUT = 5


def make_engine(database_url: str) -> Engine:
    if database_url.startswith("sqlite"):
        # The API and the worker are separate processes writing one file: WAL lets readers
        # proceed during a write, and the busy timeout makes a writer wait instead of failing.
        engine = create_engine(database_url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection, _record):
            dbapi_connection.isolation_level = None  # SQLAlchemy's "begin" below opens transactions
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin_immediate(connection):
            # A deferred transaction that reads and then writes fails at once (SQLITE_BUSY) when
            # another process wrote in between; taking the write lock up front makes it wait.
            # Read sessions (autocommit) take no lock at all.
            if connection.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
                connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    connect_args = {} if "connect_timeout" in make_url(database_url).query else {"connect_timeout": CONNECT_TIMEOUT}
    # pre-ping: a pooled connection that died with a restarted server is replaced, not used.
    return create_engine(database_url, pool_pre_ping=True, pool_size=10, max_overflow=20, connect_args=connect_args)


@functools.cache
def engine_for(database_url: str) -> Engine:
    return make_engine(database_url)


@functools.cache
def session_factory(database_url: str) -> sessionmaker[Session]:
    return sessionmaker(engine_for(database_url), expire_on_commit=False)


@functools.cache
def read_session_factory(database_url: str) -> sessionmaker[Session]:
    """Sessions for reads only, in autocommit: no BEGIN/COMMIT round trips on Postgres, no
    write lock on SQLite, and closing one does no I/O. Same connection pool as the others."""
    return sessionmaker(
        engine_for(database_url).execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False
    )


@contextmanager
def session_scope(database_url: str) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    with session_factory(database_url)() as session, session.begin():
        yield session


def is_transient(exc: BaseException) -> bool:
    """A lost connection or a server that is restarting, not a wrong statement."""
    if isinstance(exc, (OperationalError, InterfaceError)):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


class DatabaseUnavailable(Exception):
    """The database stayed unreachable for the whole retry window; the message says what waited."""


def retry_transient(
    write: Callable[[], T], *, what: str, within: float | None = 300.0, first_wait: float = 0.5, max_wait: float = 10.0
) -> T:
    """Runs ``write`` (one whole transaction) until it succeeds, waiting with exponential
    backoff while the database is unreachable, for up to ``within`` seconds (None: until it
    comes back; 0: one try). Then :class:`DatabaseUnavailable` is raised; other errors at once."""
    deadline = None if within is None else time.monotonic() + within
    wait = first_wait
    while True:
        try:
            return write()
        except DBAPIError as exc:
            if not is_transient(exc):
                raise
            if deadline is not None and time.monotonic() + wait > deadline:
                raise DatabaseUnavailable(f"{what}: the database was unreachable for {within:g} s") from exc
            log.warning("%s failed (%s); trying again in %.1f s", what, _first_line(exc), wait)
            time.sleep(wait)
            wait = min(wait * 2, max_wait)


def transaction(database_url: str, work: Callable[[Session], T], *, what: str, within: float | None = 300.0) -> T:
    """``work(session)`` in one transaction, the whole of it retried as :func:`retry_transient` says."""

    def attempt() -> T:
        with session_scope(database_url) as session:
            return work(session)

    return retry_transient(attempt, what=what, within=within)


def _first_line(exc: DBAPIError) -> str:
    return (str(exc.orig or exc).strip().splitlines() or [type(exc).__name__])[0]


# One sweeper at a time across every API process sharing the database.
SWEEP_LOCK_KEY = 0x6373736C  # "cssl"


@contextmanager
def exclusive(database_url: str, key: int = SWEEP_LOCK_KEY) -> Iterator[bool]:
    """Yields whether this process holds the advisory lock ``key`` (Postgres) for the block;
    another holder makes it False at once. On SQLite (one embedded service) always True. The
    lock goes with its connection, so a process that dies releases it."""
    engine = engine_for(database_url)
    if engine.dialect.name != "postgresql":
        yield True
        return
    with engine.connect() as connection:
        held = bool(connection.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": key}).scalar())
        connection.commit()
        try:
            yield held
        finally:
            if held:
                try:
                    connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                    connection.commit()
                except DBAPIError:  # the connection is gone, and the lock with it
                    connection.invalidate()


def create_database(database_url: str) -> None:
    """Creates the Postgres database that ``database_url`` names (a scratch database for tests
    and benchmarks), connecting through the server's ``postgres`` database."""
    _on_server(database_url, f'CREATE DATABASE "{make_url(database_url).database}"')


def drop_database(database_url: str) -> None:
    """Drops it, closing this process's pooled connections first and anyone else's by force."""
    engine_for(database_url).dispose()
    _on_server(database_url, f'DROP DATABASE IF EXISTS "{make_url(database_url).database}" WITH (FORCE)')


def _on_server(database_url: str, statement: str) -> None:
    admin = create_engine(make_url(database_url).set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(statement))
    finally:
        admin.dispose()

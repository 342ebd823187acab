"""Engines and sessions. SQLite (embedded) and Postgres differ only here."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker


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
    return create_engine(database_url, pool_pre_ping=True, pool_size=10, max_overflow=20)


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
    return sessionmaker(engine_for(database_url).execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False)


@contextmanager
def session_scope(database_url: str) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    with session_factory(database_url)() as session:
        with session.begin():
            yield session

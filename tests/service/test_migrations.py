"""Alembic against a fresh database (Postgres, or a SQLite file on the embedded backend):
empty -> head -> base -> head, and the models agree with the migrations."""

from __future__ import annotations

import uuid

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from .support import ADMIN_URL, EMBEDDED

TABLES = {
    "api_tokens",
    "jobs",
    "job_tags",
    "job_events",
    "metric_points",
    "checkpoints",
    "evaluations",
    "datasets",
    "webhooks",
    "job_webhooks",
    "webhook_messages",
    "webhook_deliveries",
    "workers",
}


@pytest.fixture()
def empty_database(service_env, tmp_path):
    name = f"cssl_migrate_{uuid.uuid4().hex[:8]}"
    if EMBEDDED:
        yield f"sqlite:///{tmp_path / name}.db"
        return
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    yield ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade(empty_database):
    from store import migrate
    from store.models import Base

    assert migrate.current_revision(empty_database) is None
    migrate.upgrade(empty_database)
    assert tables(empty_database) == TABLES
    assert migrate.current_revision(empty_database) == migrate.head_revision()

    engine = create_engine(empty_database)
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    assert diff == [], f"store/models.py and migrations/ disagree; add a revision: {diff}"

    migrate.downgrade(empty_database, "base")
    assert tables(empty_database) == set() and migrate.current_revision(empty_database) is None
    migrate.upgrade(empty_database)
    assert tables(empty_database) == TABLES


def test_a_shared_database_must_be_migrated_on_purpose(empty_database):
    from store import migrate

    with pytest.raises(RuntimeError, match="cssl db upgrade"):
        migrate.ensure_schema(empty_database, embedded=False)
    migrate.upgrade(empty_database)
    migrate.ensure_schema(empty_database, embedded=False)


def test_cli_db_and_token_commands(empty_database, monkeypatch, capsys):
    from cli.main import main
    from store import tokens
    from store.db import session_scope

    monkeypatch.setenv("CSSL_DATABASE_URL", empty_database)
    assert main(["db", "upgrade"]) == 0
    assert main(["token", "create", "--owner", "carol"]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    with session_scope(empty_database) as session:
        assert tokens.owner_for_token(session, token) == "carol"
    assert main(["token", "create", "--owner", "dave", "--admin"]) == 0
    admin_token = capsys.readouterr().out.strip().splitlines()[-1]
    with session_scope(empty_database) as session:
        assert tokens.caller_for_token(session, admin_token) == tokens.Caller("dave", admin=True)
        assert tokens.caller_for_token(session, token) == tokens.Caller("carol", admin=False)

    assert main(["token", "list", "--owner", "carol"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[0].split("\t") == ["prefix", "owner", "scope", "created", "state"]
    assert len(listed) == 2 and listed[1].startswith(token[:12] + "\tcarol\tuser\t") and listed[1].endswith("active")
    assert main(["token", "revoke", "cssl_nothing"]) == 2
    assert "no token matches" in capsys.readouterr().err
    assert main(["token", "revoke", token[:12]]) == 0
    assert main(["token", "revoke", token]) == 0  # again, by the whole token: still revoked, no error
    with session_scope(empty_database) as session:
        assert tokens.owner_for_token(session, token) is None
        assert [t.owner for t in tokens.list_tokens(session) if t.revoked_at is None] == ["dave"]
    capsys.readouterr()
    assert main(["token", "list"]) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()[1:]]
    assert [row[2] for row in rows] == ["user", "admin"]
    assert rows[0][4].startswith("revoked ") and rows[1][4] == "active"
    assert main(["db", "downgrade", "--revision", "base", "--yes"]) == 0
    assert tables(empty_database) == set()

"""Alembic driven from code, for ``cssl db upgrade`` and for services that start themselves."""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from store.db import make_engine

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # Percent signs in a password would otherwise be read as interpolation.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    config.attributes["configure_logging"] = False
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    if database_url.startswith("sqlite:///"):
        Path(database_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    command.downgrade(alembic_config(database_url), revision)


@dataclass
class Reverted:
    """A migration a downgrade undoes, and what its ``downgrade()`` deletes."""

    revision: str
    summary: str  # its docstring's first paragraph, up to a colon
    deletes: list[str]  # "table jobs", "column jobs.event_seq", "rows: DELETE FROM ..."


def downgrade_plan(database_url: str, revision: str) -> list[Reverted]:
    """The migrations ``downgrade(database_url, revision)`` would undo, newest first; ``revision``
    as the command takes it: an id, ``-N`` or ``base``."""
    scripts = ScriptDirectory.from_config(alembic_config(database_url))
    current = current_revision(database_url)
    chain = list(scripts.iterate_revisions(current, "base")) if current else []  # current first
    if revision == "base":
        undone = chain
    elif revision.startswith("-") and revision[1:].isdigit():
        undone = chain[: int(revision[1:])]
    else:
        target = scripts.get_revision(revision).revision  # raises on an unknown id, as the downgrade would
        ids = [script.revision for script in chain]
        undone = chain[: ids.index(target)] if target in ids else []
    plan = []
    for script in undone:
        paragraph = " ".join((script.module.__doc__ or "").strip().split("\n\n")[0].split())
        plan.append(Reverted(script.revision, paragraph.split(": ")[0], _deletes(script.module.downgrade)))
    return plan


def _deletes(downgrade_function) -> list[str]:
    """What a migration's ``downgrade()`` deletes, read from its source: the tables and columns it
    drops and the rows its DELETE statements remove."""
    deletes, table = [], None
    for line in inspect.getsource(downgrade_function).splitlines():
        if found := re.search(r"batch_alter_table\(\s*[\"'](\w+)", line):
            table = found.group(1)
        elif found := re.search(r"op\.drop_table\(\s*[\"'](\w+)", line):
            deletes.append(f"table {found.group(1)}")
        elif found := re.search(r"op\.drop_column\(\s*[\"'](\w+)[\"'],\s*[\"'](\w+)", line):
            deletes.append(f"column {found.group(1)}.{found.group(2)}")
        elif found := re.search(r"batch\.drop_column\(\s*[\"'](\w+)", line):
            deletes.append(f"column {table}.{found.group(1)}")
        elif found := re.search(r"(DELETE FROM [^\"']+)", line, re.IGNORECASE):
            deletes.append(f"rows: {found.group(1).strip()}")
    return deletes


def current_revision(database_url: str) -> str | None:
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def ensure_schema(database_url: str, *, embedded: bool) -> None:
    """The embedded database migrates itself; a shared one must be migrated on purpose first."""
    if embedded:
        upgrade(database_url)
        return
    current, head = current_revision(database_url), head_revision()
    if current != head:
        raise RuntimeError(
            f"the database is at revision {current or 'empty'}, the code needs {head}: run `cssl db upgrade` first"
        )
